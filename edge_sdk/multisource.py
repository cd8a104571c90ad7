"""Several cameras, one model: `Pipeline(sources=[...], model=...)`.

    capture thread ─┐ feeder ─► lane ┐
    capture thread ─┤ feeder ─► lane ├─► batcher (one model call) ─► per source: track,
    capture thread ─┘ feeder ─► lane ┘     events, drift, metrics ─► that source's sinks + shared

Each source keeps its own capture thread, tracker, zones/events, drift monitor, metrics and
sinks; results carry the source's name. Sinks passed to the pipeline receive every source's
results (`StreamResult.to_dict()` says which); a `StreamSpec`'s own sinks get only its own.
The model is loaded once and called once per batch (`edge_sdk.batcher`).
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_sdk.batcher import (
    BatchBuffer,
    Decoded,
    Gatherer,
    Pending,
    batch_limits,
    resolve_workers,
    run_batch,
)
from edge_sdk.drift import DriftMonitor
from edge_sdk.errors import EdgeError, SourceError
from edge_sdk.events import Event, EventEngine
from edge_sdk.lifecycle import Lifecycle
from edge_sdk.metrics import FrameTimings, Metrics, MetricsSnapshot, StatusUpdate
from edge_sdk.model import Model, load
from edge_sdk.pipeline import SINK_FINISH_TIMEOUT, FrameResult, StreamInfo, _engine
from edge_sdk.results import Detections
from edge_sdk.sinks.base import Sink, SinkRunner, sink_list
from edge_sdk.sources import Source, open_source
from edge_sdk.sources.capture import prepare_frame
from edge_sdk.sources.readers import is_camera_index
from edge_sdk.tracking import Tracker, build_tracker

METRICS_EVERY = 1.0
WORKER_JOIN_TIMEOUT = 30.0  # seconds: longer than any model call a pipeline can live with
MAX_SOURCES = 64
MAX_SOURCES_FILE = 1 << 20  # bytes
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = ("use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (it "
             "names files, out.NAME.jsonl, and MQTT messages)")


@dataclass(frozen=True)
class StreamSpec:
    """One source of a multi-source pipeline, with its own zones and sinks if it needs them."""

    source: int | str | Path | Source
    name: str | None = None  # default: from the source (file stem, camera index, URL host)
    zones: EventEngine | dict | str | Path | None = None  # default: the pipeline's zones
    sinks: tuple[Sink, ...] = ()


@dataclass(frozen=True)
class StreamResult(FrameResult):
    """A `FrameResult` that says which source it came from and how it was batched."""

    name: str = ""
    batch_size: int = 1
    wait_ms: float = 0.0  # in its lane, from arrival until its batch was formed
    file: str | None = None  # the image a folder source read

    def to_dict(self, events: bool = True) -> dict:
        out = super().to_dict(events)
        out["source"] = self.name
        if self.file is not None:
            out["file"] = self.file
        out["batch"] = self.batch_size
        return out


class _Stream:
    """Everything one source owns."""

    def __init__(self, name: str, source: Source, tracker: Tracker | None,
                 events: EventEngine | None, drift: DriftMonitor | None,
                 runners: list[SinkRunner]) -> None:  # fmt: skip
        self.name = name
        self.source = source
        self.tracker = tracker
        self.events = events
        self.drift = drift
        self.runners = runners
        self.metrics = Metrics()
        self.event_counts: Counter[str] = Counter()
        self.final_events: tuple[Event, ...] = ()
        self.last = None
        self.error: str | None = None
        self.feeder: threading.Thread | None = None


class MultiPipeline(Lifecycle):
    """Run one model on several sources through the dynamic batcher.

    `sources`: specs (camera index, file, URL, folder, `Source`) or `StreamSpec`s.
    `tracker`: a name (one tracker per source is built from it) or a callable returning a new
    `Tracker`. `max_batch` / `max_wait_ms` override the manifest's runtime section.
    `max_frames` counts per source. `workers`: batches in the model at once (one model, called
    concurrently; each batch takes its share of the sources, at most max_batch). Default: the
    manifest's `runtime.workers`, else `batcher.auto_workers`: up to 8 on a CPU, where
    concurrent calls beat batching; 2 on an accelerator. 1: one batch of up to max_batch at a
    time. A backend that must be compiled for concurrent calls (OpenVINO's THROUGHPUT streams)
    is told how many to expect. Other arguments as for `Pipeline`.
    """

    thread_name = "edge-batcher"

    def __init__(
        self,
        sources: Iterable[int | str | Path | Source | StreamSpec],
        model: Model | str | Path,
        *,
        tracker: str | Callable[[], Tracker] | None = None,
        zones: EventEngine | dict | str | Path | None = None,
        sinks: Iterable[Sink] = (),
        max_frames: int | None = None,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        workers: int | None = None,
        sink_queue_size: int = 64,
        sink_policy: str = "drop",
        on_status: Callable[[StatusUpdate], None] | None = None,
        drift: bool = True,
        **source_options: Any,
    ) -> None:
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise EdgeError(f"max_frames must be a positive integer, got {max_frames!r}")
        if isinstance(sources, (str, bytes, Path, int, Source, StreamSpec)):
            raise EdgeError("sources takes a list (sources=[...]); for one source, pass "
                            "source=... instead")
        specs = [s if isinstance(s, StreamSpec) else StreamSpec(s) for s in sources]
        if not specs:
            raise EdgeError("sources is empty: give at least one camera, file, folder or URL")
        if len(specs) > MAX_SOURCES:
            raise EdgeError(f"{len(specs)} sources: at most {MAX_SOURCES} per pipeline")
        if isinstance(zones, EventEngine) and len(specs) > 1:
            raise EdgeError("an EventEngine holds one camera's tracks: pass zones as a dict or "
                            "file (each source gets its own engine) or per StreamSpec")
        self.on_status = on_status
        self.status_log: deque[StatusUpdate] = deque(maxlen=200)
        self.model = model if isinstance(model, Model) else load(model)
        self.task = self.model.manifest.task.type
        self.limits = batch_limits(self.model.manifest, max_batch, max_wait_ms)
        self.max_frames = max_frames
        self.error: BaseException | None = None
        self._policy = (sink_queue_size, sink_policy)
        self.workers = resolve_workers(self.model, len(specs), workers)
        # feeders preprocess each frame (see _feed) when the workers' threads leave a core
        self._prepare_ahead = self.model.preprocess_ahead and self.model.spare_core(self.workers)
        self._gatherer = Gatherer(self.limits, self.workers)
        serve = getattr(self.model.backend, "serve", None)
        if serve is not None:  # OpenVINO: compiled for this many calls at once (streams)
            serve(min(self.workers, len(specs)))  # each source has one frame in the model
        self.streams: list[_Stream] = []
        names = _names(specs)
        for spec, name in zip(specs, names):
            self.streams.append(self._stream(spec, name, tracker, zones, drift, source_options))
            self._gatherer.add_lane(name, self.streams[-1].source.live)
        self._shared = [self._runner(s) for s in sink_list(sinks)]
        self._by_name = {s.name: s for s in self.streams}
        self._metrics = Metrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = self._looping = self._closed = False
        self._close_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._final: MetricsSnapshot | None = None
        self.final_events: tuple[Event, ...] = ()

    # -- running (the same surface as Pipeline) ---------------------------------------------

    def _halt_inputs(self) -> None:
        self._gatherer.close()
        for stream in self.streams:
            stream.source.stop(timeout=0.5)

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.streams]

    def metrics(self) -> MetricsSnapshot:
        """All sources together: total FPS, latency, drops per source and sink, events."""
        if self._final is not None:
            return self._final
        dropped: dict[str, int] = {}
        sinks = []
        for s in self.streams:
            dropped[f"source {s.name}"] = (s.source.stats().frames_dropped
                                           + self._gatherer.dropped(s.name))  # fmt: skip
            sinks.extend(r.stats() for r in s.runners)
        sinks.extend(r.stats() for r in self._shared)
        dropped.update({f"sink {k.name}": k.dropped for k in sinks})
        counts: Counter[str] = Counter()
        with self._counts_lock:
            for s in self.streams:
                counts.update(s.event_counts)
        down = tuple(s.name for s in self.streams if s.source.stats().down_since is not None)
        return self._metrics.snapshot(dropped=dropped, sinks=tuple(sinks), events=dict(counts),
                                      down=down)  # fmt: skip

    def metrics_by_source(self) -> dict[str, MetricsSnapshot]:
        """Each source's own FPS, latency, drops, sinks, drift and events."""
        out = {}
        for s in self.streams:
            source = s.source.stats()
            sinks = tuple(r.stats() for r in s.runners)
            dropped = {"source": source.frames_dropped + self._gatherer.dropped(s.name),
                       **{f"sink {k.name}": k.dropped for k in sinks}}  # fmt: skip
            with self._counts_lock:
                counts = dict(s.event_counts)
            out[s.name] = s.metrics.snapshot(
                dropped=dropped, source=source, sinks=sinks, events=counts,
                drift=s.drift.report() if s.drift is not None else None)  # fmt: skip
        return out

    # -- building ----------------------------------------------------------------------------

    def _stream(self, spec: StreamSpec, name: str, tracker, zones, drift: bool,
                options: dict) -> _Stream:  # fmt: skip
        if isinstance(spec.source, Source):
            if options:
                raise EdgeError(f"source options {sorted(options)} apply only when the "
                                "pipeline opens the source; set them on the Source instead")
            source = spec.source
            if source.on_status is None:
                source.on_status = self._status_of(name)
        else:
            source = open_source(spec.source, on_status=self._status_of(name), **options)
        track = _tracker(tracker, self.task)
        events = _engine(spec.zones if spec.zones is not None else zones, track)
        monitor = DriftMonitor.from_manifest(self.model.manifest) if drift else None
        runners = [self._runner(k) for k in sink_list(spec.sinks)]
        return _Stream(name, source, track, events, monitor, runners)

    def _runner(self, sink: Sink) -> SinkRunner:
        size, policy = self._policy
        return SinkRunner(sink, getattr(sink, "queue_size", None) or size,
                          getattr(sink, "policy", None) or policy, self._status)  # fmt: skip

    # -- the loop ----------------------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            raise EdgeError("this pipeline has already run; create a new Pipeline to run again")
        started, down = [], []
        try:
            for s in self.streams:
                try:
                    s.source.start()
                except SourceError as exc:
                    if not s.source.live:  # a missing or broken file: the user's to fix
                        raise
                    down.append((s, exc))  # a camera that is off: the others go on
                    continue
                started.append(s)
            if down and not started:
                raise down[0][1]
        except BaseException:
            for s in started:
                s.source.stop(timeout=0.5)
            raise
        for s, exc in down:
            self._status(StatusUpdate.now(f"source {s.name}", "reconnecting",
                                          f"could not open at start ({exc}); the other "
                                          "sources run meanwhile"))  # fmt: skip
            s.source.start(retry_after=exc)
        self._opened = True
        for s in self.streams:
            info = self._info([s])
            for runner in s.runners:
                runner.start(info)
        shared = self._info(self.streams)
        for runner in self._shared:
            runner.start(shared)
        for s in self.streams:
            s.feeder = threading.Thread(target=self._feed, args=(s,), name=f"edge-feed-{s.name}",
                                        daemon=True)  # fmt: skip
            s.feeder.start()

    def _feed(self, stream: _Stream) -> None:
        """Capture -> lane, for one source; ends the lane however it stops."""
        fed = 0
        try:
            while not self._stop.is_set() and not self._gatherer.closed:
                if self.max_frames is not None and fed >= self.max_frames:
                    stream.source.stop(timeout=0.5)
                    break
                if not stream.source.live and not self._gatherer.wait_free(stream.name, 0.5):
                    continue
                try:
                    frame = stream.source.read(timeout=0.5)
                except queue.Empty:
                    continue
                if frame is not None and frame.prepared is None and self._prepare_ahead and (
                        not stream.source.live or self._gatherer.idle(stream.name)):
                    frame = prepare_frame(frame, self.model.preprocess)  # off the workers
                if frame is None or not self._gatherer.offer(stream.name, frame):
                    break
                fed += 1
        except Exception as exc:  # reported and the source ended; the others keep running
            stream.error = f"{type(exc).__name__}: {exc}"
            self._status(StatusUpdate.now(f"source {stream.name}", "failed", stream.error))
        finally:
            self._gatherer.end(stream.name)

    def _background(self) -> None:
        try:
            for _ in self._loop():
                pass
        except BaseException as exc:  # kept for the caller and reported
            self.error = exc
            self._status(StatusUpdate.now("pipeline", "failed", f"{type(exc).__name__}: {exc}"))

    def _loop(self) -> Iterator[StreamResult]:
        """Start the inference workers; yield their results as they come. The hand-over queue
        holds one round of results: a slow consumer makes the workers wait (and live sources
        drop their stale frames) instead of piling results up."""
        next_push = time.perf_counter() + METRICS_EVERY
        self._looping = True
        out: queue.Queue = queue.Queue(maxsize=max(len(self.streams), self.limits.max_batch))
        workers = [threading.Thread(target=self._work, args=(out,), name=f"edge-batch-{i}",
                                    daemon=True) for i in range(self.workers)]  # fmt: skip
        try:
            for w in workers:
                w.start()
            running = len(workers)
            while running:
                try:
                    item = out.get(timeout=0.5)
                except queue.Empty:
                    next_push = self._push_metrics(next_push)
                    continue
                if item is None:  # a worker ended
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
                next_push = self._push_metrics(next_push)
        finally:
            self._gatherer.close()
            deadline = time.monotonic() + WORKER_JOIN_TIMEOUT
            for w in workers:  # each finishes at most the model call it is in
                while w.is_alive() and time.monotonic() < deadline:
                    with contextlib.suppress(queue.Empty):  # unblock a worker's put
                        while True:
                            out.get_nowait()
                    w.join(0.05)
            self._looping = False
            self._close()

    def _work(self, out: queue.Queue) -> None:
        """One inference worker: batch -> model call -> per frame: tracking, events, drift,
        metrics (in its source's state; the source's next frame waits for `done`) -> sinks."""
        buffer = BatchBuffer()
        try:
            while not self._stop.is_set():
                batch = self._gatherer.next_batch(timeout=0.5)
                if batch is None:
                    break
                if not batch:
                    continue
                decoded = run_batch(self.model, [p.frame for p in batch],
                                    self.limits.max_batch, buffer)  # fmt: skip
                for item in batch:  # files: decode the next frames while these are tracked
                    self._by_name[item.key].source.prefetch()
                for item, done in zip(batch, decoded):
                    result = self._finish(item, done)
                    stream = self._by_name[result.name]
                    for runner in (*stream.runners, *self._shared):
                        runner.submit(result)
                    out.put(result)
                    self._gatherer.done(item.key)
        except BaseException as exc:  # handed to the loop, which raises it
            self._gatherer.close()
            out.put(exc)
        finally:
            out.put(None)

    def _finish(self, item: Pending, done: Decoded) -> StreamResult:
        """Tracking, events, drift and metrics of one frame, in its own source's state."""
        stream = self._by_name[item.key]
        frame = replace(item.frame, prepared=None)  # results waiting for sinks keep no tensors
        t0 = time.perf_counter()
        result = done.result
        events: tuple[Event, ...] = ()
        if stream.tracker is not None and isinstance(result, Detections):
            result = stream.tracker.update(result)
            if stream.events is not None:
                events = tuple(replace(e, source=stream.name) for e in
                               stream.events.update(result, frame.index, frame.timestamp))
                self._count(stream, events)
        if stream.drift is not None:
            stream.drift.update(frame.image, result)
        t1 = time.perf_counter()
        stream.last = frame
        timings = FrameTimings(
            queue_ms=(item.taken - frame.captured_at) * 1e3 - frame.prepare_ms,
            preprocess_ms=done.preprocess_ms,
            infer_ms=done.infer_ms, decode_ms=done.decode_ms, post_ms=(t1 - t0) * 1e3,
            latency_ms=(t1 - frame.captured_at) * 1e3,
        )  # fmt: skip
        stream.metrics.record(timings, t1)
        self._metrics.record(timings, t1)
        return StreamResult(frame, result, events, timings, name=stream.name,
                            batch_size=done.batch_size, wait_ms=(item.taken - item.arrived) * 1e3,
                            file=frame.source if frame.source != stream.source.name else None,
                            )  # fmt: skip

    def _close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        aborted = self._stop.is_set()
        self._gatherer.close()
        for s in self.streams:  # signal every source first, then wait for each
            s.source.stop(timeout=0)
        for s in self.streams:
            s.source.stop()
            if s.feeder is not None:
                s.feeder.join(2.0)
        ending: list[Event] = []
        for s in self.streams:
            if s.events is not None and s.last is not None:
                s.final_events = tuple(replace(e, source=s.name) for e in
                                       s.events.close(s.last.index, s.last.timestamp))
                self._count(s, s.final_events)
                ending.extend(s.final_events)
            for runner in s.runners:
                runner.finish(s.final_events, discard=aborted)
        self.final_events = tuple(ending)
        for runner in self._shared:
            runner.finish(self.final_events, discard=aborted)
        deadline = time.monotonic() + SINK_FINISH_TIMEOUT
        for runner in (*[r for s in self.streams for r in s.runners], *self._shared):
            if not runner.join(max(0.0, deadline - time.monotonic())):
                self._status(StatusUpdate.now(f"sink {runner.name}", "error",
                                              "did not finish writing in time"))  # fmt: skip
        self._final = self.metrics()
        for s in self.streams:
            error = s.source.stats().error
            if error and not any(u.message == error for u in self.status_log):  # not said yet
                self._status(StatusUpdate.now(f"source {s.name}", "failed", error))

    def _count(self, stream: _Stream, events: tuple[Event, ...]) -> None:
        if events:
            with self._counts_lock:
                stream.event_counts.update(e.kind for e in events)

    def _push_metrics(self, due: float) -> float:
        now = time.perf_counter()
        if now < due:
            return due
        by_source = self.metrics_by_source()
        for s in self.streams:
            for runner in s.runners:
                runner.push_metrics(by_source[s.name])
        if self._shared:
            total = self.metrics()
            for runner in self._shared:
                runner.push_metrics(total)
        return now + METRICS_EVERY

    def _status_of(self, name: str) -> Callable[[StatusUpdate], None]:
        def report(update: StatusUpdate) -> None:
            self._status(replace(update, stage=f"{update.stage} {name}"))

        return report

    def _status(self, update: StatusUpdate) -> None:
        self.status_log.append(update)
        if self.on_status is not None:
            with contextlib.suppress(Exception):  # a status callback must not break the loop
                self.on_status(update)

    def _info(self, streams: list[_Stream]) -> StreamInfo:
        one = streams[0] if len(streams) == 1 else None
        zones = lines = ()
        if one is not None and one.events is not None:
            zones = tuple((z.name, z.polygon) for z in one.events.zones)
            lines = tuple((ln.name, ln.start, ln.end) for ln in one.events.lines)
        return StreamInfo(
            source=one.name if one else ", ".join(s.name for s in streams),
            fps=one.source.fps if one else None, live=any(s.source.live for s in streams),
            task=self.task, labels=self.model.labels, zones=zones, lines=lines,
        )  # fmt: skip


def _tracker(tracker: str | Callable[[], Tracker] | None, task: str) -> Tracker | None:
    if tracker is None:
        return None
    if task != "detect":
        raise EdgeError(f"tracking needs a detection model; this bundle's task is {task!r}")
    if isinstance(tracker, str):
        return build_tracker(tracker)
    if isinstance(tracker, Tracker):
        raise EdgeError("one Tracker instance cannot follow several cameras: pass a tracker "
                        "name ('bytetrack') or a function that returns a new Tracker")
    if callable(tracker):
        built = tracker()
        if not isinstance(built, Tracker):
            raise EdgeError(f"the tracker factory returned {type(built).__name__}, not a Tracker")
        return built
    raise EdgeError(f"tracker must be a name like 'bytetrack' or a factory, got {tracker!r}")


def default_name(spec: int | str | Path | Source) -> str:
    """A short, file-name-safe name for a source: file stem, camera N, URL host and path."""
    if isinstance(spec, Source):
        spec = spec.name
    text = str(spec).strip()
    if is_camera_index(text):
        return f"camera{text}"
    if "://" in text:
        text = text.split("://", 1)[1].split("@")[-1]
    else:
        text = Path(text).stem or Path(text).name
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:64]
    return text or "source"


def _names(specs: list[StreamSpec]) -> list[str]:
    """Given names are checked and must be unique; missing ones are derived, then numbered."""
    given = [s.name for s in specs if s.name is not None]
    for name in given:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise EdgeError(f"source name {name!r}: {NAME_RULE}")
    if len(set(given)) != len(given):
        twice = sorted({n for n in given if given.count(n) > 1})[0]
        raise EdgeError(f"source name {twice!r} is used twice; give each source its own name")
    taken = set(given)
    out = []
    for spec in specs:
        if spec.name is not None:
            out.append(spec.name)
            continue
        base = default_name(spec.source)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        out.append(name)
    return out


def read_sources(path: str | Path) -> list[StreamSpec]:
    """A sources file: JSON (`[{"name": "door", "source": "rtsp://...", "zones": "z.json"}]`,
    or `{"sources": [...]}`) or text, one source per line as `SOURCE` or `NAME=SOURCE`
    (lines starting with `#` are comments). Relative file paths are taken from the file's folder."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SOURCES_FILE + 1)
    except FileNotFoundError:
        raise EdgeError(f"sources file {path} not found") from None
    except OSError as exc:
        raise EdgeError(f"cannot read sources file {path}: {exc.strerror}") from None
    if len(raw) > MAX_SOURCES_FILE:
        raise EdgeError(f"sources file {path} is larger than 1 MB; list one source per line")
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows Notepad) is not part of a name
    except UnicodeDecodeError:
        raise EdgeError(f"sources file {path} is not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        specs = _json_sources(text, path)
    else:
        specs = _text_sources(text, path)
    if not specs:
        raise EdgeError(f"sources file {path} lists no source")
    if len(specs) > MAX_SOURCES:
        raise EdgeError(f"sources file {path} lists {len(specs)} sources; at most {MAX_SOURCES}")
    return specs


def _json_sources(text: str, path: Path) -> list[StreamSpec]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EdgeError(f"sources file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("sources")
    if not isinstance(data, list):
        raise EdgeError(f"sources file {path}: expected a list of sources or "
                        '{"sources": [...]}')  # fmt: skip
    specs = []
    for i, item in enumerate(data):
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            item = {"source": item}
        if not isinstance(item, dict) or "source" not in item:
            raise EdgeError(f"sources file {path}: entry {i} needs a \"source\"")
        unknown = set(item) - {"name", "source", "zones"}
        if unknown:
            raise EdgeError(f"sources file {path}: entry {i} has unknown key(s) "
                            f"{', '.join(sorted(unknown))} (known: name, source, zones)")
        source, name, zones = item["source"], item.get("name"), item.get("zones")
        if isinstance(source, bool) or not isinstance(source, (str, int)):
            raise EdgeError(f"sources file {path}: entry {i}: source must be a string or a "
                            "camera index")
        if isinstance(source, str) and not source.strip():  # else: the file's own folder
            raise EdgeError(f"sources file {path}: entry {i}: source is empty; give a camera "
                            "index, a video file, an image folder or a stream URL")
        if name is not None and not isinstance(name, str):
            raise EdgeError(f"sources file {path}: entry {i}: name must be a string")
        if name is not None and name_problem(name):
            raise EdgeError(f"sources file {path}: entry {i}: {name_problem(name)}; {NAME_RULE}")
        if zones is not None and not isinstance(zones, (str, dict)):
            raise EdgeError(f"sources file {path}: entry {i}: zones must be a file name or an "
                            "object")
        if isinstance(zones, str):
            zones = _relative(zones, path)
        specs.append(StreamSpec(_relative(source, path), name, zones))
    return specs


def _text_sources(text: str, path: Path) -> list[StreamSpec]:
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            specs.append(_text_line(line, path, number))
    return specs


def _text_line(line: str, path: Path, number: int) -> StreamSpec:
    """`NAME=SOURCE` or `SOURCE`. An '=' in a URL's query or in an existing file's name is the
    source's own; any other text before an '=' is a name, and a bad one is said with its line."""
    name, sep, rest = (part.strip() for part in line.partition("="))
    if sep and NAME.fullmatch(name) and rest:
        return StreamSpec(_relative(rest, path), name)
    if not sep or "://" in name or _exists(_relative(line, path)):
        return StreamSpec(_relative(line, path))
    where = f"sources file {path} line {number}"
    example = "a line is NAME=SOURCE (door=rtsp://cam/1) or a SOURCE alone"
    problem = name_problem(name)
    if problem is None:  # a good name, nothing after it
        raise EdgeError(f"{where}: no source after '{name}='; {example}")
    raise EdgeError(f"{where}: {problem}; {NAME_RULE}; {example}")


def name_problem(name: str) -> str | None:
    """What makes `name` unfit to name a source (it becomes part of file names), or None."""
    if NAME.fullmatch(name):
        return None
    if not name:
        return "the name is empty"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
    path_parts = [part for part in ("/", "\\", "..") if part in name]
    if path_parts:
        return f"name {name!r} is a path (it has {' and '.join(map(repr, path_parts))}), not a name"
    if bad:
        return f"name {name!r} has {', '.join(map(repr, bad))}"
    if len(name) > 64:
        return f"name {name[:20]!r}... is {len(name)} characters long"
    return f"name {name!r} starts with {name[0]!r}"


def _exists(spec: str | int) -> bool:
    try:
        return Path(spec).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: no such file
        return False


def _relative(spec: str | int, path: Path) -> str | int:
    """A relative file path in a sources file is relative to that file."""
    if isinstance(spec, int) or is_camera_index(spec) or "://" in spec:
        return spec
    p = Path(spec).expanduser()
    return str(p if p.is_absolute() else path.parent / p)


__all__ = ["MultiPipeline", "StreamResult", "StreamSpec", "default_name", "read_sources"]
