"""What the running pipeline reports: status updates, per-frame timings, and snapshots.

`Metrics` is written by the inference thread and read by anyone (CLI status line, MQTT
telemetry); percentiles come from a rolling window so a long run reports the recent past.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_sdk.drift import DriftReport
    from edge_sdk.sinks.base import SinkStats
    from edge_sdk.sources import SourceStats

STAGES = ("queue", "preprocess", "infer", "decode", "post", "model", "latency", "added")
STALLED_AFTER = 2.0  # s without a result (or 4 frame intervals, if longer): recent FPS is 0


@dataclass(frozen=True)
class StatusUpdate:
    """Something a user should hear about: a source reconnecting, a sink failing, the end."""

    stage: str  # "source", "sink <name>", "pipeline"
    kind: str  # e.g. "reconnecting", "reconnected", "failed", "ended", "error"
    message: str
    time: float  # wall-clock seconds

    @classmethod
    def now(cls, stage: str, kind: str, message: str) -> StatusUpdate:
        return cls(stage, kind, message, time.time())

    def __str__(self) -> str:
        return f"[{self.stage}] {self.kind}: {self.message}"


@dataclass(frozen=True)
class FrameTimings:
    """Milliseconds spent on one frame, stage by stage."""

    queue_ms: float  # captured -> taken by the inference thread
    preprocess_ms: float
    infer_ms: float
    decode_ms: float
    post_ms: float  # tracker, zones/events, drift statistics
    latency_ms: float  # captured -> result ready

    @property
    def model_ms(self) -> float:
        """What `model.predict` costs: preprocess + infer + decode."""
        return self.preprocess_ms + self.infer_ms + self.decode_ms

    @property
    def added_ms(self) -> float:
        """Latency the pipeline adds on top of the model: queue wait, tracking, events."""
        return self.latency_ms - self.model_ms


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class MetricsSnapshot:
    frames: int
    elapsed_s: float
    fps: float  # frames / seconds since the first result
    recent_fps: float  # over the rolling window; 0 once results have stopped coming
    latency: dict[str, Percentiles] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # "source", "sink <name>" -> count
    source: SourceStats | None = None
    sinks: tuple[SinkStats, ...] = ()
    drift: DriftReport | None = None
    events: dict[str, int] = field(default_factory=dict)  # event type -> count so far
    down: tuple[str, ...] = ()  # sources not delivering now (reopening); see SourceStats

    @property
    def sources_down(self) -> list[str]:
        """The sources that are down now: this snapshot's own, or the several sources'."""
        if self.source is not None and self.source.down_since is not None:
            return [self.source.name]
        return list(self.down)

    def status_line(self) -> str:
        """One line for a terminal: FPS, latency, drops, sink errors, drift."""
        lat = self.latency.get("latency")
        parts = [f"{self.frames} frames", f"{self.recent_fps:.1f} fps"]
        if lat is not None:
            parts.append(f"latency p50 {lat.p50_ms:.1f} ms p95 {lat.p95_ms:.1f} ms")
        parts.append("dropped " + (", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "0"))
        errors = sum(s.errors for s in self.sinks)
        if errors:
            parts.append(f"sink errors {errors}")
        if self.source is not None and self.source.reconnects:
            parts.append(f"reconnects {self.source.reconnects}")
        if self.sources_down:
            parts.append(f"DOWN {', '.join(self.sources_down)}")
        if self.drift is not None and self.drift.level != "stable":
            parts.append(f"drift {self.drift.level}")
        return " | ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


class Metrics:
    """Thread-safe recorder of per-frame timings over a rolling window."""

    def __init__(self, window: int = 600) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}
        self._done: deque[float] = deque(maxlen=window)
        self.frames = 0
        self._first: float | None = None
        self._last: float | None = None

    def record(self, t: FrameTimings, done_at: float) -> None:
        with self._lock:
            if self._first is None:
                self._first = done_at
            self._last = done_at
            self.frames += 1
            self._done.append(done_at)
            for stage, value in (
                ("queue", t.queue_ms), ("preprocess", t.preprocess_ms), ("infer", t.infer_ms),
                ("decode", t.decode_ms), ("post", t.post_ms), ("model", t.model_ms),
                ("latency", t.latency_ms), ("added", t.added_ms),
            ):  # fmt: skip
                self._values[stage].append(value)

    def snapshot(self, now: float | None = None, **extra: object) -> MetricsSnapshot:
        """`now`: the `time.perf_counter()` to judge the recent FPS at (default: now). Results
        that stopped coming (a dead camera) make it 0: it kept the last window's rate, so the
        status line and the fleet's low-FPS alert saw a dead camera running at full speed."""
        with self._lock:
            values = {k: np.asarray(v, np.float64) for k, v in self._values.items() if v}
            done = list(self._done)
            frames, first, last = self.frames, self._first, self._last
        elapsed = (last - first) if first is not None and last is not None else 0.0
        fps = (frames - 1) / elapsed if frames > 1 and elapsed > 0 else 0.0
        span = done[-1] - done[0] if len(done) > 1 else 0.0
        recent = (len(done) - 1) / span if span > 0 else fps
        now = time.perf_counter() if now is None else now
        if done and now - done[-1] > max(STALLED_AFTER, 4 / recent if recent > 0 else 0.0):
            recent = 0.0
        latency = {
            k: Percentiles(float(np.percentile(v, 50)), float(np.percentile(v, 95)))
            for k, v in values.items()
        }
        return MetricsSnapshot(frames, elapsed, fps, recent, latency, **extra)  # type: ignore[arg-type]
