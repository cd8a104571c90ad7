"""Consumer-side bookkeeping: drop duplicates by message id and report gaps by sequence number.

QoS 1 is at-least-once, so a consumer must expect the same message more than once (after a
reconnect the device re-sends whatever was not yet acknowledged). A gap in ``seq`` means
messages the device accepted and then dropped (full outbox) or that another consumer of a
shared subscription received.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sync.envelope import Envelope


@dataclass(frozen=True)
class Gap:
    device: str
    stream: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        span = f"seq {self.first}" if self.first == self.last else f"seq {self.first}-{self.last}"
        return f"gap: {self.device}/{self.stream} missing {span} ({self.count})"


@dataclass(frozen=True)
class Observation:
    """What one incoming message meant: new, a duplicate, or new after a gap."""

    duplicate: bool
    gap: Gap | None = None
    late: bool = False  # fills (part of) an earlier gap
    reset: bool = False  # seq went backwards: the device's outbox was replaced


class StreamTracker:
    """Dedup by id (bounded memory) and per-(device, stream) gap detection."""

    def __init__(self, max_ids: int = 200_000, report_gaps: bool = True) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._max_ids = max_ids
        self._report_gaps = report_gaps
        self._high: dict[tuple[str, str], int] = {}
        self._missing: dict[tuple[str, str], set[int]] = {}
        self.received = 0
        self.duplicates = 0
        self.gaps = 0
        self.missing = 0

    def observe(self, env: Envelope) -> Observation:
        self.received += 1
        if env.id in self._ids:
            self.duplicates += 1
            self._ids.move_to_end(env.id)
            return Observation(duplicate=True)
        self._ids[env.id] = None
        if len(self._ids) > self._max_ids:
            self._ids.popitem(last=False)
        if not self._report_gaps:
            return Observation(duplicate=False)
        key = (env.device, env.stream)
        high = self._high.get(key)
        if high is None or env.seq == high + 1:
            self._high[key] = env.seq
            return Observation(duplicate=False)
        if env.seq > high + 1:
            gap = Gap(env.device, env.stream, high + 1, env.seq - 1)
            self._high[key] = env.seq
            if gap.count <= 100_000:  # remember small gaps so late arrivals can fill them
                self._missing.setdefault(key, set()).update(range(gap.first, gap.last + 1))
            self.gaps += 1
            self.missing += gap.count
            return Observation(duplicate=False, gap=gap)
        holes = self._missing.get(key, set())
        if env.seq in holes:
            holes.discard(env.seq)
            self.missing -= 1
            return Observation(duplicate=False, late=True)
        # An unseen id with an old seq: the device started over with a new outbox.
        self._high[key] = env.seq
        self._missing.pop(key, None)
        return Observation(duplicate=False, reset=True)

    def summary(self) -> str:
        unique = self.received - self.duplicates
        return (
            f"received {self.received}, unique {unique}, duplicates {self.duplicates}, "
            f"gaps {self.gaps} ({self.missing} messages missing)"
        )
