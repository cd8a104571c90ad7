"""`edge-run BUNDLE --source SRC`: run a bundle on a camera, video, stream or images.

Results go to the outputs you name (--save, --jsonl, --events, --mqtt), or, with none, to
stdout as JSON lines. Progress on stderr is a line while the model loads, one live status line
(FPS, latency, drops) and a summary at the end (what the model runs on, files skipped as
unreadable). A user mistake (bad bundle, unopenable source, unwritable output) is one or two
lines on stderr and exit code 2, never a traceback. A run that processed no frame, or whose
requested output failed (e.g. a video that could not be written), exits 1: a script must not
take it for success.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from edge_sdk import multirun
from edge_sdk.argtypes import positive_int, whole_number
from edge_sdk.clips import DEFAULT_MAX_BYTES
from edge_sdk.errors import EdgeError
from edge_sdk.manifest import Manifest
from edge_sdk.metrics import MetricsSnapshot, StatusUpdate
from edge_sdk.model import Model, load
from edge_sdk.multirun import stream_specs
from edge_sdk.multisource import MAX_SOURCES, MultiPipeline, StreamSpec
from edge_sdk.native_quiet import set_quiet
from edge_sdk.outputs import check_outputs
from edge_sdk.pipeline import FrameResult, Pipeline
from edge_sdk.sinks import AnnotatedVideoSink, JsonlSink, Sink
from edge_sdk.sources import open_source

EPILOG = """\
examples:
  edge-run out/x86-int8 --source photo.jpg
  edge-run out/x86-int8 --source photos/ --jsonl results.jsonl
  edge-run out/detector --source 0 --save annotated.mp4 --zones zones.json
  edge-run out/detector --source rtsp://cam.local/stream --mqtt mqtt://broker:1883 \\
      --device-id cam-01 --events events.jsonl
  edge-run --store /var/lib/edge --seed out/x86-int8 --source 0 --mqtt mqtt://broker:1883 \\
      --device-id cam-01 --trust fleet.pub --group lobby   (a fleet device: `--store --help`)

sources: a camera index (0), a video file, an image or a folder of images, or a stream URL
(rtsp://, http://). Files are processed frame by frame, every frame; --realtime plays them at
their own frame rate like a camera (newest frame first, late frames dropped and counted).
zones file: {"zones": [{"name": "door", "polygon": [[x, y], ...]}],
             "lines": [{"name": "entry", "start": [x, y], "end": [x, y]}]}  (frame pixels)
"""

STATUS_EVERY_TTY = 0.5  # seconds between live status line refreshes
STATUS_EVERY_LOG = 10.0  # ... when stderr is a log file, not a terminal
# Each inference thread is an OS thread the runtime starts at load: past the cores they only
# take turns, and 100000 of them hang the load for minutes. 256 is the most cores a profile
# knows of (the manifest schema's format_selection.threads), the same on every machine.
MAX_THREADS = 256
MAX_WAIT_MS = 1000.0  # the batcher's own bound (edge_sdk/batcher.py)
MB = 1 << 20  # --clips-max-mb's unit, as the clip store's default is written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run",
        description="Run an edge-opt bundle on a camera, video, stream or images: preprocess, "
        "infer and decode as its manifest says, then track, count and report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # one usage line: an argparse error is then two lines, not a screenful of flags
        usage="edge-run BUNDLE --source SRC [--source SRC ...] [options]  "
              "(fleet device: edge-run --store --help)",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by `edge-opt export` "
                   "(OUT/TARGET, it holds manifest.json), not a model file")
    p.add_argument(
        "--source",
        action="append",
        help="camera index, video file, image, folder of images, or stream URL; repeat it for "
        "several sources sharing the model (outputs get one file per source: out.NAME.jsonl)",
    )
    p.add_argument("--sources", type=Path, metavar="FILE",
                   help="a list of sources: one per line (SOURCE or NAME=SOURCE), or JSON "
                   '[{"name": "door", "source": "rtsp://...", "zones": "door.json"}]')
    out = p.add_argument_group("outputs (with none, results go to stdout as JSON lines)")
    out.add_argument(
        "--save", type=Path, metavar="VIDEO", help="write an annotated video (.mp4 or .avi)"
    )
    out.add_argument("--jsonl", type=Path, metavar="FILE", help="one JSON line per frame")
    out.add_argument("--events", type=Path, metavar="FILE", help="one JSON line per event")
    out.add_argument("--mqtt", metavar="URL", help="publish results and events to this broker")
    out.add_argument("--device-id", help="this device's id on MQTT (needed with --mqtt)")
    out.add_argument(
        "--outbox", type=Path, metavar="FILE", help="MQTT outbox file (default: sync's default)"
    )
    out.add_argument("--webhook", metavar="URL",
                     help="POST each event as JSON to this URL (retries, bounded queue)")
    out.add_argument("--clips", type=Path, metavar="DIR",
                     help="a JPEG snapshot (+ metadata) of every zone entry and line crossing, "
                     "kept in DIR up to --clips-max-mb (its own oldest files deleted first; "
                     "other files there are left alone)")
    out.add_argument("--clips-max-mb", type=_megabytes, metavar="N",
                     help="with --clips: the most its snapshots and clips may take in DIR, in MB "
                     f"(default {DEFAULT_MAX_BYTES >> 20}; 0.5 is half a MB)")
    run = p.add_argument_group("processing")
    run.add_argument("--zones", type=Path, metavar="FILE", help="zones and lines (JSON)")
    run.add_argument(
        "--tracker",
        default=None,
        help="tracker for detection bundles (default bytetrack; 'none' to disable)",
    )
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    run.add_argument(
        "--realtime",
        action="store_true",
        help="play a video file at its frame rate, like a live camera",
    )
    run.add_argument("--threads", type=_threads, metavar="N",
                     help=f"inference threads, 1 to {MAX_THREADS} (default: the profile's "
                     "count, at most this machine's cores)")
    run.add_argument("--max-batch", type=positive_int, metavar="N",
                     help="several sources: frames per model call (default: the bundle's)")
    run.add_argument("--max-wait-ms", type=_wait_ms, metavar="MS",
                     help="several sources: how long a batch waits for slower sources, 0 to "
                     f"{MAX_WAIT_MS:g} (default: the bundle's, else 10)")
    run.add_argument("--workers", type=int, metavar="N",
                     help="several sources: model calls in flight at once, each on its share "
                     "of the sources (one model in memory). Default: the bundle's, else up to "
                     "8 on a CPU, 2 on a GPU. On a CPU concurrent one-frame calls fill the "
                     "cores better than batching (OpenVINO then runs N requests in parallel "
                     "streams); fewer if memory is tight (each call holds its own "
                     "activations). On a GPU keep it low (2) with --max-batch: few, larger "
                     f"batches. 1: one batch at a time; at most {MAX_SOURCES}")
    run.add_argument(
        "--trust-bundle-code",
        action="store_true",
        help="run the decoder a bundle carries as Python code (decoder.py, from edge-opt "
        "export --decoder file.py:Name); without it such a bundle is refused",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no status line or summary")
    return p


def _threads(text: str) -> int:
    """argparse type for --threads: 0 or less is no count, and each thread is an OS thread."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}; omit --threads for "
                                         "the profile's count")
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_THREADS}, got {value}: each is an OS thread the runtime starts, and "
            "past the cores they only take turns")
    return value


def _megabytes(text: str) -> int:
    """argparse type for --clips-max-mb: a positive, finite number of MB, as bytes (at least
    1); 0, negative, NaN and inf are refused here rather than by the clip store mid-setup."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB") from None
    size = value * MB
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a positive number of MB, got {text}")
    if not math.isfinite(size):
        raise argparse.ArgumentTypeError(f"{text} MB is more than any disk holds")
    return max(1, round(size))


def _wait_ms(text: str) -> float:
    """argparse type for --max-wait-ms: the batcher takes 0 to 1000 ms; NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= MAX_WAIT_MS:  # also NaN
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_WAIT_MS:g} ms, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--store" or a.startswith("--store=") for a in argv):
        _quiet_opencv()
        _stop_on_sigterm()
        from edge_sdk.store_run import main as store_main  # a fleet device: model store mode

        return store_main(argv)
    args = build_parser().parse_args(argv)
    _quiet_opencv()
    if args.quiet:
        set_quiet()
    _stop_on_sigterm()
    status = StatusPrinter(quiet=args.quiet)
    try:
        if args.clips_max_mb is not None and args.clips is None:
            raise EdgeError("--clips-max-mb sizes the --clips folder: add --clips DIR, or drop "
                            "--clips-max-mb")
        if args.mqtt and not args.device_id:
            raise EdgeError("--mqtt needs --device-id ID (this device's name on the broker)")
        specs = stream_specs(args)
        if args.max_frames is not None and args.max_frames < 1:
            raise EdgeError(f"--max-frames must be at least 1, got {args.max_frames}")
        if args.workers is not None and not 1 <= args.workers <= MAX_SOURCES:
            raise EdgeError(f"--workers must be at least 1 (model calls in flight at once) "
                            f"and at most {MAX_SOURCES} (one per source), got {args.workers}")
        if len(specs) == 1 and args.sources is None:
            args.source = specs[0].source
        pipeline = _build(args, status.event, specs)
        pipeline.start()
    except EdgeError as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    interrupted = False
    try:
        while not pipeline.join(status.every):
            status.line(pipeline.metrics().status_line())
    except KeyboardInterrupt:
        interrupted = True
        _ignore_interrupts()  # a second Ctrl-C cut the closing short: traceback, bad videos
        status.clear()
        if not args.quiet:
            print("edge-run: stopping: closing the outputs", file=sys.stderr)
        pipeline.stop()
    status.clear()
    snapshot = pipeline.metrics()
    many = isinstance(pipeline, MultiPipeline)
    if not args.quiet:
        text = (multirun.summary(pipeline, _outputs(args, per_source=True)) if many
                else summary(snapshot, pipeline, _outputs(args)))
        print("edge-run: " + text, file=sys.stderr)
    if pipeline.error is not None:
        print(f"edge-run: error: {pipeline.error}", file=sys.stderr)
        return 1
    if interrupted:
        return 130
    failures = multirun.failures(pipeline) if many else _failures(snapshot, pipeline)
    for failure in failures:
        print(f"edge-run: error: {failure}", file=sys.stderr)
    if failures or (snapshot.source is not None and snapshot.source.error):
        return 1
    return 0


def _failures(m: MetricsSnapshot, pipeline: Pipeline) -> list[str]:
    """Why this run did not do what was asked: nothing processed, or an output lost results."""
    out = []
    if m.frames == 0:
        skipped = m.source.skipped if m.source is not None else ()
        why = (f": {len(skipped)} unreadable or truncated file(s) skipped "
               f"({_names(skipped)})" if skipped else "")
        out.append(f"no frames were processed from {pipeline.source.name}{why}; check the "
                   "source")
    for s in m.sinks:
        if s.failed or s.errors:
            what = "could not be opened" if s.failed else f"lost {s.errors} result(s)"
            out.append(f"output {s.name} failed: it {what} ({s.last_error or 'no detail'})")
    return out


def _names(paths: tuple[str, ...], limit: int = 5) -> str:
    shown = ", ".join(Path(p).name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _stop_on_sigterm() -> None:
    """A service manager stops edge-run with SIGTERM: stop like Ctrl-C, closing every output.
    Its default action killed the process at once, each video left without its index."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ignore_interrupts() -> None:
    """Once stopping, Ctrl-C and SIGTERM wait for it: the stop is bounded by its timeouts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _quiet_opencv() -> None:
    """OpenCV and FFmpeg log to stderr on their own; edge-run reports errors itself."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _build(args: argparse.Namespace, on_status: Callable[[StatusUpdate], None],
           specs: list[StreamSpec]) -> Pipeline | MultiPipeline:
    """Model, tracker, zones, sinks and source from the flags; EdgeError for any mistake."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_saying_so(args.bundle, args.quiet, threads=args.threads,
                               trust_code=args.trust_bundle_code)
    for warning in caught:  # e.g. a missing TensorRT provider: said once, on its own line
        print(f"edge-run: warning: {warning.message}", file=sys.stderr)
    detect = model.manifest.task.type == "detect"
    tracker = args.tracker
    if tracker is None:
        tracker = "bytetrack" if detect else None
    elif tracker.lower() == "none":
        tracker = None
    if args.zones is not None and not detect:
        raise EdgeError(f"--zones needs a detection bundle; {args.bundle} is a "
                        f"{model.manifest.task.type} bundle")  # fmt: skip
    if args.zones is not None and tracker is None:
        raise EdgeError("--zones needs a tracker; drop --tracker none")
    shared: list[Sink] = []
    if args.mqtt:
        from edge_sdk.sinks.mqtt import MqttSink

        shared.append(MqttSink(args.mqtt, args.device_id, args.outbox))
    if args.webhook:
        from edge_sdk.sinks.webhook import WebhookSink

        shared.append(WebhookSink(args.webhook, extra={"device": args.device_id}
                                  if args.device_id else None))  # fmt: skip
    if args.clips:
        from edge_sdk.clips import EventClipSink

        shared.append(EventClipSink(args.clips, max_bytes=args.clips_max_mb or DEFAULT_MAX_BYTES))
    if len(specs) > 1 or args.sources is not None:  # each source writes its own files
        if not (shared or args.save or args.jsonl or args.events):
            shared.append(StdoutSink())
        return multirun.build_multi(args, specs, model, tracker, shared, on_status)
    check_outputs(multirun.file_outputs(args), [args.source], model.folder)
    sinks = []
    if args.save:
        sinks.append(AnnotatedVideoSink(args.save))
    if args.jsonl:
        sinks.append(JsonlSink(args.jsonl))
    if args.events:
        sinks.append(JsonlSink(args.events, events_only=True))
    sinks.extend(shared)
    if not sinks:
        sinks.append(StdoutSink())
    source = open_source(args.source, realtime=args.realtime)
    # Offline (a file played as fast as possible) every frame must reach every output: sinks
    # make inference wait. Live, inference never waits: a slow sink drops its oldest results.
    policy = "drop" if source.live else "wait"
    return Pipeline(source, model, tracker=tracker, zones=args.zones, sinks=sinks,
                    max_frames=args.max_frames, sink_policy=policy,
                    on_status=on_status)  # fmt: skip


def load_saying_so(bundle: str | Path, quiet: bool, **options: object) -> Model:
    """`load(bundle, **options)`, saying so on stderr unless `quiet`: the runtime's load (an
    OpenVINO compile, a TensorRT engine build) can take minutes on a device, silent otherwise.
    A terminal gets one line ended by the time; a log two whole lines (nothing half-written).
    Store mode (store_run.py) loads its bundles through it too."""
    tty = sys.stderr.isatty()
    start = time.perf_counter()
    said = False

    def announce(manifest: Manifest) -> None:
        nonlocal said
        if quiet:
            return
        n = manifest.runtime.threads
        print(f"edge-run: loading {bundle} ({manifest.runtime.backend}, {n} "
              f"thread{'' if n == 1 else 's'}) ...", end="" if tty else "\n",
              file=sys.stderr, flush=True)  # fmt: skip
        said = True

    try:
        model = load(bundle, on_load=announce, **options)
    except BaseException:
        if said and tty:
            print(file=sys.stderr, flush=True)  # the error that follows gets its own line
        raise
    if said:
        took = f"{time.perf_counter() - start:.1f} s"
        print(f" {took}" if tty else f"edge-run: loaded {bundle} in {took}",
              file=sys.stderr, flush=True)  # fmt: skip
    return model


def _outputs(args: argparse.Namespace, per_source: bool = False) -> list[str]:
    """What the summary says was written; several sources write out.NAME.ext files."""
    named = [("annotated video", args.save), ("results file", args.jsonl),
             ("events file", args.events)]  # fmt: skip
    out = [f"{what}: {multirun.per_source(path, '*') if per_source else path}"
           for what, path in named if path]
    if args.mqtt:
        out.append(f"mqtt: {args.mqtt} as {args.device_id}")
    if args.webhook:
        out.append(f"webhook: {args.webhook}")
    if args.clips:
        out.append(f"snapshots: {args.clips}")
    return out


class StdoutSink(Sink):
    """JSON lines on stdout, every result (it waits rather than drop)."""

    name = "stdout"
    policy = "wait"
    queue_size = 256

    def write(self, result: FrameResult) -> None:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")

    def end(self, events: tuple) -> None:
        if events:
            sys.stdout.write(json.dumps({"end": True, "events": [e.to_dict() for e in events]})
                             + "\n")  # fmt: skip
        sys.stdout.flush()

    def on_metrics(self, snapshot: MetricsSnapshot) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()


class StatusPrinter:
    """A live one-line status on a terminal (rewritten in place); periodic lines in a log."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.every = STATUS_EVERY_TTY if self.tty else STATUS_EVERY_LOG
        self._lock = threading.Lock()
        self._shown = False
        self._last_log = time.monotonic()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                sys.stderr.write("\r\x1b[K" + text)
                self._shown = True
            elif time.monotonic() - self._last_log >= STATUS_EVERY_LOG - 0.01:
                sys.stderr.write(text + "\n")
                self._last_log = time.monotonic()
            sys.stderr.flush()

    def event(self, update: StatusUpdate) -> None:
        """Reconnects, sink errors: always a line of their own (the end is in the summary)."""
        if self.quiet or update.kind == "ended":
            return
        with self._lock:
            prefix = "\r\x1b[K" if self._shown else ""
            sys.stderr.write(f"{prefix}edge-run: {update}\n")
            self._shown = False
            sys.stderr.flush()

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self._shown = False


def summary(m: MetricsSnapshot, pipeline: Pipeline, outputs: list[str]) -> str:
    """The end-of-run report: throughput, latency per stage, drops, errors, drift, events."""
    lines = [f"{m.frames} frames in {m.elapsed_s:.1f} s ({m.fps:.1f} fps) from "
             f"{pipeline.source.name}"]  # fmt: skip
    if m.latency:
        lines.append("  latency ms    " + "  ".join(f"{k:>10}" for k in m.latency))
        for q in ("p50", "p95"):
            values = "  ".join(f"{getattr(v, f'{q}_ms'):10.2f}" for v in m.latency.values())
            lines.append(f"  {q:<12}  {values}")
    backend = pipeline.model.backend
    missing = getattr(backend, "missing_providers", None)
    lines.append(f"  runs on: {backend.name}" + (
        f" (the bundle also asked for {', '.join(missing)}: not in this build)" if missing
        else ""))
    lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in m.dropped.items()))
    if m.source is not None and m.source.skipped:
        lines.append(f"  skipped {len(m.source.skipped)} unreadable or truncated file(s): "
                     f"{_names(m.source.skipped)}")
    for s in m.sinks:
        state = "FAILED to open, " if s.failed else ""
        err = f", last error: {s.last_error}" if s.errors else ""
        lines.append(f"  sink {s.name}: {state}{s.written} frames handled, {s.dropped} dropped, "
                     f"errors {s.errors}{err}")  # fmt: skip
    if m.source is not None and (m.source.reconnects or m.source.read_errors or m.source.error):
        lines.append(
            f"  source: reconnects {m.source.reconnects}, read errors "
            f"{m.source.read_errors}" + (f", {m.source.error}" if m.source.error else "")
        )
    if m.drift is not None:
        d = m.drift
        parts = [f"{name} PSI {v:.3f}" for name, v in
                 (("brightness", d.brightness_psi), ("top-1 confidence", d.confidence_psi))
                 if v is not None]  # fmt: skip
        lines.append(f"  input drift vs calibration: {d.level}"
                     + (f" ({', '.join(parts)})" if parts else ""))  # fmt: skip
    if m.events:
        lines.append("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(m.events.items())))
    lines.extend(f"  {o}" for o in outputs)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
