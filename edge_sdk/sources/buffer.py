"""A bounded hand-off queue between two threads, with the overflow policy chosen per queue.

`drop` never blocks the producer: when full, the oldest item goes and is counted (a live
camera keeps only its newest frames; a slow sink loses old results, never stalls inference).
`wait` blocks the producer instead (a file source, where every frame must be processed).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Generic, TypeVar

from edge_sdk.errors import EdgeError

T = TypeVar("T")
POLICIES = ("drop", "wait")


class BoundedQueue(Generic[T]):
    def __init__(self, maxsize: int, policy: str = "drop") -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise EdgeError(f"queue size must be an integer >= 1, got {maxsize!r}")
        if policy not in POLICIES:
            raise EdgeError(f"queue policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.dropped = 0
        self.high_water = 0  # the most items ever waiting at once
        self._items: deque[T] = deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add an item; False if the queue is closed (or, in `wait` mode, on timeout)."""
        with self._cond:
            if self.policy == "wait":
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.maxsize and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            if self._closed:
                return False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Next item; None once the queue is closed and drained; `queue.Empty` on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise queue.Empty
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; waiting getters receive the remaining items, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        """Discard waiting items (counted as dropped); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.dropped += n
            self._cond.notify_all()
            return n

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
