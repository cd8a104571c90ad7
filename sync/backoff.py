"""Reconnect delays: exponential backoff with full jitter and a cap.

Full jitter (delay drawn uniformly from ``[0, min(cap, initial * 2**attempt)]``) spreads a
fleet's reconnects after a broker restart instead of having every device retry in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    """Successive delays for one connection; ``reset()`` after a successful connect."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        # min() before the power would overflow on very long outages.
        return min(self.cap, self.initial * 2 ** min(self.attempt, 62))

    def next_delay(self) -> float:
        """Draw the delay before the next attempt and count the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
