"""`Pipeline`: source -> preprocess -> model -> decode -> track -> events -> sinks.

Three roles, each in its own thread, joined by bounded queues:

    capture thread --(source buffer)--> inference thread --(one queue per sink)--> sink threads

The capture thread decodes each frame and, when the model's threads leave a core free,
preprocesses it for the model (`Source.prepare`; a live camera's frame only while the model
keeps up), so that work overlaps with inference of the frame before. The inference thread
(the caller's thread when you iterate, a background thread after `start()`) does inference
(and preprocessing when the capture thread did not), decoding, tracking, zones/events and
drift statistics, then offers the result to every sink without waiting. A live source keeps
only its newest frames; a slow sink drops its oldest pending results (both counted), so
neither a busy camera nor a slow disk or network ever stalls inference.

    for r in edge_sdk.Pipeline("video.mp4", model, tracker="bytetrack", sinks=[...]):
        print(r.frame.index, r.result, r.events)
"""

from __future__ import annotations

import contextlib
import json
import queue
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.drift import DriftMonitor
from edge_sdk.errors import EdgeError
from edge_sdk.events import Event, EventEngine
from edge_sdk.lifecycle import Lifecycle
from edge_sdk.metrics import FrameTimings, Metrics, MetricsSnapshot, StatusUpdate
from edge_sdk.model import Model, load
from edge_sdk.results import Classification, Detections
from edge_sdk.sinks.base import Sink, SinkRunner, sink_list
from edge_sdk.sources import Source, VideoFrame, open_source
from edge_sdk.tracking import Tracker, build_tracker
from edge_sdk.zones import ZoneError

METRICS_EVERY = 1.0  # seconds between metrics pushed to sinks (telemetry)
SINK_FINISH_TIMEOUT = 60.0  # at the end, how long pending results may take to be written


@dataclass(frozen=True)
class StreamInfo:
    """What sinks learn before the first frame."""

    source: str
    fps: float | None
    live: bool
    task: str  # "classify" | "detect"
    labels: tuple[str, ...]
    zones: tuple[tuple[str, np.ndarray], ...] = ()  # (name, (M, 2) polygon)
    lines: tuple[tuple[str, np.ndarray, np.ndarray], ...] = ()  # (name, start, end)


@dataclass(frozen=True)
class FrameResult:
    """Everything the pipeline produced for one frame."""

    frame: VideoFrame
    result: Classification | Detections  # tracked (tracker_ids set) when a tracker runs
    events: tuple[Event, ...]
    timings: FrameTimings

    def to_dict(self, events: bool = True) -> dict:
        """JSON-ready: frame index, timestamp, source, the result's fields, events, latency."""
        out: dict[str, Any] = {
            "frame": self.frame.index,
            "timestamp": round(self.frame.timestamp, 3),
            "source": self.frame.source,
            **self.result.to_dict(),
        }
        if events:
            out["events"] = [e.to_dict() for e in self.events]
        out["latency_ms"] = round(self.timings.latency_ms, 2)
        return out


class Pipeline(Lifecycle):
    """Run a model on a source, with optional tracking, zones/lines and sinks.

    `source`: camera index, video file, stream URL, image or folder, or a `Source`.
    `model`: a loaded `Model` or a bundle folder. `tracker`: a name ("bytetrack") or a
    `Tracker`. `zones`: an `EventEngine`, a zone config dict or a JSON file path (needs a
    tracker). `sink_policy`: "drop" (default; a slow sink loses old results) or "wait" (the
    pipeline waits for sinks: offline processing where every frame must be written); a sink
    with its own `policy` / `queue_size` attributes overrides these. Extra keyword arguments
    go to the source (realtime, buffer_size, pace, max_reconnects, backoff).

    `sources=[...]` instead of `source` runs one model on several sources through the dynamic
    batcher (`edge_sdk.multisource.MultiPipeline`: `max_batch`, `max_wait_ms`).
    """

    thread_name = "edge-infer"

    def __new__(cls, source: Any = None, model: Any = None, *args: Any,
                sources: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        if sources is None:
            return super().__new__(cls)
        if source is not None:
            raise EdgeError("give either source or sources, not both")
        from edge_sdk.multisource import MultiPipeline

        return MultiPipeline(sources, model, *args, **kwargs)

    def __init__(
        self,
        source: int | str | Path | Source,
        model: Model | str | Path,
        *,
        sources: None = None,
        tracker: str | Tracker | None = None,
        zones: EventEngine | dict | str | Path | None = None,
        sinks: Iterable[Sink] = (),
        max_frames: int | None = None,
        sink_queue_size: int = 64,
        sink_policy: str = "drop",
        on_status: Callable[[StatusUpdate], None] | None = None,
        drift: bool = True,
        **source_options: Any,
    ) -> None:
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise EdgeError(f"max_frames must be a positive integer, got {max_frames!r}")
        self.on_status = on_status
        self.status_log: deque[StatusUpdate] = deque(maxlen=200)
        self.model = model if isinstance(model, Model) else load(model)
        self.task = self.model.manifest.task.type
        self.tracker = _tracker(tracker, self.task)
        self.events = _engine(zones, self.tracker)
        if isinstance(source, Source):
            if source_options:
                raise EdgeError(
                    f"source options {sorted(source_options)} apply only when the "
                    "pipeline opens the source; set them on the Source instead"
                )
            self.source = source
            if source.on_status is None:
                source.on_status = self._status
        else:
            self.source = open_source(source, on_status=self._status, **source_options)
        if (self.source.prepare is None and self.model.preprocess_ahead
                and self.model.spare_core()):
            self.source.prepare = self.model.preprocess
        self.max_frames = max_frames
        self.drift = DriftMonitor.from_manifest(self.model.manifest) if drift else None
        self.final_events: tuple[Event, ...] = ()
        self._event_counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.error: BaseException | None = None
        self._runners = [
            SinkRunner(
                s, getattr(s, "queue_size", None) or sink_queue_size,
                getattr(s, "policy", None) or sink_policy, self._status,
            )
            for s in sink_list(sinks)
        ]  # fmt: skip
        self._metrics = Metrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._looping = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._last: VideoFrame | None = None
        self._final: MetricsSnapshot | None = None

    # -- running -----------------------------------------------------------------------------

    def _halt_inputs(self) -> None:
        self.source.stop(timeout=0.5)

    def metrics(self) -> MetricsSnapshot:
        """FPS, per-stage latency p50/p95, drops per stage, sink errors and input drift."""
        if self._final is not None:
            return self._final
        source = self.source.stats()
        sinks = tuple(r.stats() for r in self._runners)
        dropped = {"source": source.frames_dropped, **{f"sink {s.name}": s.dropped for s in sinks}}
        return self._metrics.snapshot(
            dropped=dropped, source=source, sinks=sinks,
            drift=self.drift.report() if self.drift is not None else None,
            events=self._counts(),
        )  # fmt: skip

    # -- the inference loop ------------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            raise EdgeError("this pipeline has already run; create a new Pipeline to run again")
        self.source.start()
        self._opened = True
        info = self._stream_info()
        for runner in self._runners:
            runner.start(info)

    def _background(self) -> None:
        try:
            for _ in self._loop():
                pass
        except BaseException as exc:  # reported, and kept for the caller to inspect
            self.error = exc
            self._status(StatusUpdate.now("pipeline", "failed", f"{type(exc).__name__}: {exc}"))

    def _loop(self) -> Iterator[FrameResult]:
        count = 0
        next_push = time.perf_counter() + METRICS_EVERY
        self._looping = True
        try:
            while not self._stop.is_set() and (self.max_frames is None or count < self.max_frames):
                try:
                    frame = self.source.read(timeout=0.5)
                except queue.Empty:  # a live source reconnecting: keep metrics flowing
                    next_push = self._push_metrics(next_push)
                    continue
                if frame is None:
                    break
                result = self._process(frame)
                for runner in self._runners:
                    runner.submit(result)
                count += 1
                next_push = self._push_metrics(next_push)
                yield result
        finally:
            self._looping = False
            self._close()

    def _process(self, frame: VideoFrame) -> FrameResult:
        t0 = time.perf_counter()
        model = self.model
        feeds, transform, pre_ms = model.preprocess_frame(frame)  # or the capture thread's
        if frame.prepared is not None:
            frame = replace(frame, prepared=None)  # results waiting for sinks keep no tensors
        t1 = time.perf_counter()
        outputs = model.backend.infer(feeds)
        t2 = time.perf_counter()
        self.source.prefetch()  # the next read overlaps with decoding and tracking this one
        result = model.decode(outputs, transform)
        t3 = time.perf_counter()
        events: tuple[Event, ...] = ()
        if self.tracker is not None and isinstance(result, Detections):
            result = self.tracker.update(result)
            if self.events is not None:
                events = tuple(self.events.update(result, frame.index, frame.timestamp))
                self._count(events)
        if self.drift is not None:
            self.drift.update(frame.image, result)
        t4 = time.perf_counter()
        self._last = frame
        timings = FrameTimings(
            queue_ms=(t0 - frame.captured_at) * 1e3 - frame.prepare_ms, preprocess_ms=pre_ms,
            infer_ms=(t2 - t1) * 1e3, decode_ms=(t3 - t2) * 1e3, post_ms=(t4 - t3) * 1e3,
            latency_ms=(t4 - frame.captured_at) * 1e3,
        )  # fmt: skip
        self._metrics.record(timings, t4)
        return FrameResult(frame, result, events, timings)

    def _close(self) -> None:
        """Stop capture, close open tracks, let sinks finish (or discard if stopped)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        aborted = self._stop.is_set()
        self.source.stop()
        if self.events is not None and self._last is not None:
            self.final_events = tuple(self.events.close(self._last.index, self._last.timestamp))
            self._count(self.final_events)
        for runner in self._runners:
            runner.finish(self.final_events, discard=aborted)
        deadline = time.monotonic() + SINK_FINISH_TIMEOUT
        for runner in self._runners:
            if not runner.join(max(0.0, deadline - time.monotonic())):
                self._status(StatusUpdate.now(f"sink {runner.name}", "error",
                                              "did not finish writing in time"))  # fmt: skip
        self._final = self.metrics()
        error = self.source.stats().error
        if error and not any(u.message == error for u in self.status_log):  # not said yet
            self._status(StatusUpdate.now("source", "failed", error))

    def _count(self, events: tuple[Event, ...]) -> None:
        if events:
            with self._counts_lock:
                self._event_counts.update(e.kind for e in events)

    def _counts(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._event_counts)

    def _push_metrics(self, due: float) -> float:
        now = time.perf_counter()
        if now < due or not self._runners:
            return due
        snapshot = self.metrics()
        for runner in self._runners:
            runner.push_metrics(snapshot)
        return now + METRICS_EVERY

    def _status(self, update: StatusUpdate) -> None:
        self.status_log.append(update)
        if self.on_status is not None:
            with contextlib.suppress(Exception):  # a status callback must not break the loop
                self.on_status(update)

    def _stream_info(self) -> StreamInfo:
        zones = lines = ()
        if self.events is not None:
            zones = tuple((z.name, z.polygon) for z in self.events.zones)
            lines = tuple((ln.name, ln.start, ln.end) for ln in self.events.lines)
        return StreamInfo(
            source=self.source.name, fps=self.source.fps, live=self.source.live, task=self.task,
            labels=self.model.labels, zones=zones, lines=lines,
        )  # fmt: skip


def _tracker(tracker: str | Tracker | None, task: str) -> Tracker | None:
    if tracker is None:
        return None
    if task != "detect":
        raise EdgeError(f"tracking needs a detection model; this bundle's task is {task!r}")
    if isinstance(tracker, Tracker):
        return tracker
    if isinstance(tracker, str):
        return build_tracker(tracker)
    raise EdgeError(f"tracker must be a name like 'bytetrack' or a Tracker, got {tracker!r}")


def _engine(zones: EventEngine | dict | str | Path | None, tracker: Tracker | None):
    """Track events always come with a tracker; zones and lines need one."""
    if zones is None:
        if tracker is None:
            return None
        return EventEngine(end_after_frames=getattr(tracker, "track_buffer", 30))
    if tracker is None:
        raise EdgeError("zones and lines need tracked detections: pass tracker='bytetrack'")
    if isinstance(zones, EventEngine):
        return zones
    if isinstance(zones, (str, Path)):
        zones = read_zones(zones)
    return EventEngine.from_config(zones, end_after_frames=getattr(tracker, "track_buffer", 30))


MAX_ZONES_FILE = 1 << 20  # bytes


def read_zones(path: str | Path) -> dict:
    """A zones/lines JSON file; any file it cannot be is a ZoneError naming the file."""
    path = Path(path)
    try:
        if not path.is_dir() and path.exists() and not stat.S_ISREG(path.stat().st_mode):
            # a FIFO would block the start forever, /dev/zero fill the memory
            raise ZoneError(f"zones file {path} is not a regular file; name a JSON file")
        with open(path, "rb") as f:
            raw = f.read(MAX_ZONES_FILE + 1)
        if len(raw) > MAX_ZONES_FILE:
            raise ZoneError(f"zones file {path} is larger than 1 MB; a zones file names a few "
                            "polygons and lines")
        return json.loads(raw)
    except FileNotFoundError:
        raise ZoneError(f"zones file {path} not found") from None
    except IsADirectoryError:
        raise ZoneError(f"zones file {path} is a folder; name the JSON file in it") from None
    except OSError as exc:
        raise ZoneError(f"cannot read zones file {path} ({exc.strerror or exc})") from None
    except RecursionError:
        raise ZoneError(f"zones file {path} is nested too deeply to be a zones file") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to read
        raise ZoneError(f"zones file {path} is not valid JSON: {exc}") from None
