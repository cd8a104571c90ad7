"""When a file source should read its next frame: as late as possible, but not too late.

A frame read ahead of need waits in the queue for the inference thread, and that wait is
latency the result carries; a frame read only when asked for makes inference wait for the
decode. `Pacer` starts each read at the earlier of:

- the consumer's explicit request (`prefetch()`, which the pipeline calls once inference of
  the current frame is done, so the read overlaps with decoding and tracking it), and
- a just-in-time estimate: when the consumer last took a frame, plus its usual time per frame,
  minus the usual read time and a safety margin (medians of recent frames, so one frame
  delayed by other load does not move the estimate). The margin grows when the consumer had
  to wait (the read was late) and shrinks slowly while reads are on time.

At most one frame is in flight (being read or waiting to be taken) at any time.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

HISTORY = 15  # frames the medians are taken over
MIN_MARGIN, MAX_MARGIN = 0.0003, 0.003  # seconds
LATE = 0.0002  # the consumer waited longer than this: the read started too late


class Pacer:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked = False  # the consumer asked and no read has started for it yet
        self._in_flight = False  # a frame is being read or waits to be taken
        self._stopped = False
        self._last_taken: float | None = None
        self._gaps: deque[float] = deque(maxlen=HISTORY)  # consumer work per frame
        self._reads: deque[float] = deque(maxlen=HISTORY)  # seconds per read
        self.margin = 0.001
        self.late = 0  # frames the consumer waited for

    # -- consumer side -------------------------------------------------------------------------

    def prefetch(self) -> None:
        with self._cond:
            if not self._in_flight and not self._asked:
                self._asked = True
                self._cond.notify_all()

    def taken(self, asked_at: float, got_at: float) -> None:
        """The consumer asked for a frame at `asked_at` and had it at `got_at`."""
        with self._cond:
            if self._last_taken is not None:
                self._gaps.append(asked_at - self._last_taken)
                waited = got_at - asked_at
                if waited > LATE:
                    self.late += 1
                    self.margin = min(MAX_MARGIN, self.margin + min(waited, 0.001))
                else:
                    self.margin = max(MIN_MARGIN, self.margin * 0.98)
            self._last_taken = got_at
            self._in_flight = False
            self._cond.notify_all()

    # -- reader side ---------------------------------------------------------------------------

    def wait_turn(self) -> bool:
        """Block until the next read should start; False once stopped."""
        with self._cond:
            while not self._stopped:
                if self._asked:
                    break
                timeout = None
                if not self._in_flight:
                    start = self._start_time()
                    if start is not None:
                        timeout = start - time.perf_counter()
                        if timeout <= 0:
                            break
                self._cond.wait(timeout)
            if self._stopped:
                return False
            self._asked = False
            self._in_flight = True
            return True

    def read_took(self, seconds: float) -> None:
        with self._cond:
            self._reads.append(seconds)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _start_time(self) -> float | None:
        if self._last_taken is None or len(self._gaps) < 3 or not self._reads:
            return None
        gap, read = statistics.median(self._gaps), statistics.median(self._reads)
        return self._last_taken + gap - read - self.margin
