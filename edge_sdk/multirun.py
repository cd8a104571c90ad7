"""`edge-run BUNDLE --source A --source B` (or `--sources FILE`): the command line's side of
several sources on one model.

Each source gets its own outputs, named after it: `--jsonl out.jsonl` writes
`out.<name>.jsonl` per source, `--save annotated.mp4` one `annotated.<name>.mp4` per source,
`--events` likewise; MQTT and stdout are shared (every record says its source).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from edge_sdk.errors import EdgeError
from edge_sdk.metrics import StatusUpdate
from edge_sdk.model import Model
from edge_sdk.multisource import MultiPipeline, StreamSpec, _names, read_sources
from edge_sdk.outputs import check_outputs
from edge_sdk.sinks import AnnotatedVideoSink, JsonlSink, Sink
from edge_sdk.sources import reader_for


def stream_specs(args: argparse.Namespace) -> list[StreamSpec]:
    """--source flags then the --sources file, in that order; at least one."""
    specs = []
    for spec in args.source or []:
        if not spec.strip():
            raise EdgeError("--source is empty: give a camera index (0), a video file, an "
                            "image or a folder of images, or a stream URL")
        specs.append(StreamSpec(spec))
    if args.sources is not None:
        specs.extend(read_sources(args.sources))
    if not specs:
        raise EdgeError("give a --source (camera index, video file, image, folder or stream "
                        "URL), several --source flags, or --sources FILE")
    return specs


def per_source(path: Path, name: str) -> Path:
    """out.jsonl -> out.NAME.jsonl"""
    return path.with_name(f"{path.stem}.{name}{path.suffix}")


def file_outputs(args: argparse.Namespace, name: str | None = None) -> list[tuple[str, Path]]:
    """(flag, path) of the files edge-run writes; with `name`, that source's own files."""
    named = [("--save", args.save), ("--jsonl", args.jsonl), ("--events", args.events)]
    return [(flag, per_source(Path(path), name) if name else Path(path))
            for flag, path in named if path]  # fmt: skip


def build_multi(args: argparse.Namespace, specs: list[StreamSpec], model: Model,
                tracker: str | None, shared: list[Sink],
                on_status: Callable[[StatusUpdate], None]) -> MultiPipeline:
    """The pipeline for several sources, each with its own files; `shared` get every result."""
    names = _names(specs)
    check_outputs([out for name in names for out in file_outputs(args, name)],
                  [s.source for s in specs], model.folder)  # fmt: skip
    named = []
    for spec, name in zip(specs, names):
        sinks: list[Sink] = []
        if args.save:
            sinks.append(AnnotatedVideoSink(per_source(args.save, name)))
        if args.jsonl:
            sinks.append(JsonlSink(per_source(args.jsonl, name)))
        if args.events:
            sinks.append(JsonlSink(per_source(args.events, name), events_only=True))
        named.append(StreamSpec(spec.source, name, spec.zones, tuple(sinks)))
    if any(s.zones is not None for s in named) and tracker is None:
        raise EdgeError("zones need a tracker; drop --tracker none")
    # Files: every frame reaches every output (sinks make inference wait). Any live source:
    # inference never waits, a slow sink drops its oldest results.
    live = args.realtime or any(reader_for(s.source).live for s in named)
    return MultiPipeline(
        named, model, tracker=tracker, zones=args.zones, sinks=shared,
        max_frames=args.max_frames, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        workers=args.workers,
        on_status=on_status, realtime=args.realtime, sink_policy="drop" if live else "wait",
    )  # fmt: skip


def summary(pipeline: MultiPipeline, outputs: list[str]) -> str:
    """Totals, then one line per source: frames, fps, latency, drops, errors, events."""
    m = pipeline.metrics()
    lines = [f"{m.frames} frames in {m.elapsed_s:.1f} s ({m.fps:.1f} fps) from "
             f"{len(pipeline.streams)} sources, max batch {pipeline.limits.max_batch}, "
             f"max wait {pipeline.limits.max_wait_ms:g} ms, {pipeline.workers} worker(s)"
             ]  # fmt: skip
    lines.append(f"  runs on: {pipeline.model.backend.name}")
    for name, s in pipeline.metrics_by_source().items():
        lat = s.latency.get("latency")
        line = f"  {name}: {s.frames} frames, {s.fps:.1f} fps"
        if lat is not None:
            line += f", latency p50 {lat.p50_ms:.1f} ms p95 {lat.p95_ms:.1f} ms"
        line += ", dropped " + ", ".join(f"{k} {v}" for k, v in s.dropped.items())
        if s.events:
            line += ", events " + ", ".join(f"{k} {v}" for k, v in sorted(s.events.items()))
        if s.source is not None and s.source.error:
            line += f", {s.source.error}"
        elif s.source is not None and s.source.down_since is not None:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.source.down_since))
            line += f", DOWN since {since} (reopening)"
        lines.append(line)
    for sink in m.sinks:
        if sink.errors or sink.failed or sink.dropped:
            lines.append(f"  sink {sink.name}: {sink.written} frames handled, "
                         f"{sink.dropped} dropped, errors {sink.errors}"
                         + (f", last error: {sink.last_error}" if sink.errors else ""))
    lines.extend(f"  {o}" for o in outputs)
    return "\n".join(lines)


def failures(pipeline: MultiPipeline) -> list[str]:
    """Why the run did not do what was asked: a source gave nothing or failed, an output
    lost results."""
    out = []
    for name, s in pipeline.metrics_by_source().items():
        if s.frames == 0:
            out.append(f"no frames were processed from {name}; check the source")
        if s.source is not None and s.source.error:
            out.append(f"source {name} failed: {s.source.error}")
    for stream in pipeline.streams:
        if stream.error:
            out.append(f"source {stream.name} failed: {stream.error}")
    for s in pipeline.metrics().sinks:
        if s.failed or s.errors:
            what = "could not be opened" if s.failed else f"lost {s.errors} result(s)"
            out.append(f"output {s.name} failed: it {what} ({s.last_error or 'no detail'})")
    return out
