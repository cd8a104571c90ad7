"""The health gate: is a freshly activated model fit to keep running on this device?

Judged over its first `frames` frames on the real camera (not a test image): any non-finite
output, an inference error rate above `max_error_rate`, or a throughput below
`min_speed_ratio` of the previous model's (median model time per frame, measured on the same
device just before the switch) fails it, and so does not seeing its frames within `timeout`
seconds (a stalled camera or a hung candidate; the deploy agent enforces it). Timing skips
the candidate's first WARMUP frames (cold caches), and a slowdown of less than NOISE_MS per
frame never fails the gate: for a sub-millisecond model that is scheduling noise on a busy
CPU, not lost throughput. The verdict is read by the deploy agent's thread while the inference
thread feeds it, hence the lock.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass

WARMUP = 3  # first frames of a candidate left out of its timing
NOISE_MS = 1.0  # per-frame slowdown too small to judge on a shared CPU


@dataclass(frozen=True)
class GateSpec:
    """What a deployment asks of a new model (validated: it comes from the network)."""

    frames: int = 30
    max_error_rate: float = 0.01
    min_speed_ratio: float = 0.8
    timeout: float = 300.0  # seconds to see `frames` frames, else the candidate is rolled back

    @classmethod
    def from_dict(cls, d: object) -> GateSpec:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError("gate must be an object")
        spec = cls(**{k: d[k] for k in ("frames", "max_error_rate", "min_speed_ratio",
                                         "timeout") if k in d})
        if isinstance(spec.frames, bool) or not (isinstance(spec.frames, int)
                                                 and 1 <= spec.frames <= 100000):
            raise ValueError("gate.frames must be an integer from 1 to 100000")
        for name in ("max_error_rate", "min_speed_ratio"):
            value = getattr(spec, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 <= value <= 1:
                raise ValueError(f"gate.{name} must be a number from 0 to 1")
        if isinstance(spec.timeout, bool) or not isinstance(spec.timeout, (int, float)) or \
                not 0 < spec.timeout <= 86400:
            raise ValueError("gate.timeout must be a number of seconds from 0 to 86400")
        return spec


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: not decided yet
    reason: str
    frames: int
    errors: int
    speed_ratio: float | None


class HealthGate:
    """Counts what the new model does on its first frames and decides."""

    def __init__(self, spec: GateSpec, baseline_ms: float | None) -> None:
        self.spec = spec
        self.baseline_ms = baseline_ms  # the previous model's median time per frame
        self._lock = threading.Lock()
        self._frames = 0
        self._errors = 0
        self._times: list[float] = []
        self._failure: str | None = None

    def frame(self, model_ms: float) -> None:
        with self._lock:
            self._frames += 1
            self._times.append(model_ms)

    def error(self, exc: BaseException, *, counted: bool = False) -> None:
        """One frame failed; ``counted`` if its inference already counted it (a failed
        decode), so that the frame is not counted twice."""
        with self._lock:
            self._frames += 0 if counted else 1
            self._errors += 1
            limit = self.spec.max_error_rate * self.spec.frames
            if self._errors > limit and self._failure is None:
                self._failure = (f"inference errors: {self._errors} in {self._frames} frames "
                                 f"(last: {type(exc).__name__}: {str(exc)[:200]})")

    def non_finite(self, output: str) -> None:
        with self._lock:
            self._frames += 1
            if self._failure is None:
                self._failure = f"non-finite values (NaN/inf) in output {output!r}"

    def verdict(self) -> Verdict:
        with self._lock:
            ratio, slower_ms = None, 0.0
            times = self._times[WARMUP:] if len(self._times) > WARMUP else self._times
            if times and self.baseline_ms:
                median = statistics.median(times)
                ratio = self.baseline_ms / max(median, 1e-6)
                slower_ms = median - self.baseline_ms
            if self._failure is not None:
                return Verdict(False, self._failure, self._frames, self._errors, ratio)
            if self._frames < self.spec.frames:
                return Verdict(None, "", self._frames, self._errors, ratio)
            if ratio is not None and ratio < self.spec.min_speed_ratio and slower_ms > NOISE_MS:
                return Verdict(False, f"throughput {ratio:.0%} of the previous model's (at "
                                      f"least {self.spec.min_speed_ratio:.0%} needed)",
                               self._frames, self._errors, ratio)
            return Verdict(True, "", self._frames, self._errors, ratio)
