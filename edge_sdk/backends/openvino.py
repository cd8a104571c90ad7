"""OpenVINO backend: compiles the IR for the CPU with the manifest's threads and hints.

An infer request runs one inference at a time, so concurrent `infer` calls (several pipeline
threads sharing one Model) each take an idle request from a pool, creating one when none is
free; the compiled model is shared, so a request costs only its own buffers.

Compiled for LATENCY (one stream using every thread) concurrent requests take turns on that
stream. A caller that will make N calls at once (the multi-camera batcher's workers) says so
with `serve(N)`: the model is recompiled with the THROUGHPUT hint for N requests, so the CPU
plugin splits its threads into streams that run requests side by side, and N requests are
made ready. `serve(1)` goes back to the manifest's own settings (LATENCY unless it says
otherwise), which is what a single pipeline gets.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from edge_sdk.backends.model_io import check_model_io
from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest


@dataclass(frozen=True)
class _Compiled:
    """One compilation with its own request pool and output ports (ports belong to it)."""

    model: ov.CompiledModel
    idle: queue.SimpleQueue
    outputs: list
    hint: str
    requests: int  # requests made ready for concurrent callers
    streams: int  # what the plugin chose: how many requests really run side by side


class OpenVinoBackend:
    uses_cache = True  # compiled blobs in the device's cache folder skip recompiling

    def __init__(self, manifest: Manifest, model_path: Path, cache_dir: Path | None = None
                 ) -> None:
        rt = manifest.runtime  # options: allow-listed by the manifest schema
        self._path = model_path
        self._base = {"INFERENCE_NUM_THREADS": rt.threads, "PERFORMANCE_HINT": "LATENCY",
                      **rt.options}
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot use the compile cache folder {cache_dir}: "
                                   f"{exc.strerror}; fix its permissions or unset it") from None
            self._base["CACHE_DIR"] = str(cache_dir)
        self._core = ov.Core()
        self._lock = threading.Lock()  # serialises `serve`; `infer` reads `_state` once
        self.output_names = [o.name for o in manifest.outputs]
        compiled = self._compile(self._base)
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        inputs = {name: _dims_and_dtype(port) for port in compiled.inputs
                  for name in port.get_names()}
        check_model_io(manifest, inputs,
                       [n for p in compiled.outputs for n in p.get_names()], model_path)
        self.concurrency = 1
        self._state = self._ready(compiled, 1)

    @property
    def compiled(self) -> ov.CompiledModel:
        return self._state.model

    @property
    def requests(self) -> int:
        """Infer requests ready for concurrent callers (more are made if more call at once)."""
        return self._state.requests

    @property
    def streams(self) -> int:
        """How many requests the CPU plugin runs side by side (1 under LATENCY)."""
        return self._state.streams

    @property
    def hint(self) -> str:
        return self._state.hint

    def serve(self, callers: int) -> None:
        """Compile for `callers` concurrent `infer` calls: THROUGHPUT with that many requests
        when > 1, the manifest's settings (LATENCY) when 1. Calls in flight finish on the
        compilation they started on. With a cache folder the recompile loads the same blob."""
        if isinstance(callers, bool) or not isinstance(callers, int) or callers < 1:
            raise BackendError(f"concurrent callers must be an integer >= 1, got {callers!r}")
        with self._lock:
            if callers == self.concurrency:
                return
            config = self._base if callers == 1 else {
                **self._base, "PERFORMANCE_HINT": "THROUGHPUT",
                "PERFORMANCE_HINT_NUM_REQUESTS": callers}
            self._state = self._ready(self._compile(config), callers)
            self.concurrency = callers

    def _compile(self, config: dict) -> ov.CompiledModel:
        try:
            return self._core.compile_model(str(self._path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with long C++ traces
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO could not load {self._path.name}: {first}") from None

    def _ready(self, compiled: ov.CompiledModel, callers: int) -> _Compiled:
        idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(callers):
            idle.put(compiled.create_infer_request())
        hint = str(compiled.get_property("PERFORMANCE_HINT")).split(".")[-1]
        streams = int(compiled.get_property("NUM_STREAMS"))
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.to_string() if hasattr(precision, "to_string") else precision
        extra = (f", {hint} {streams} stream(s) x {callers} requests" if callers > 1 else "")
        self.name = f"openvino {ov.get_version().split('-')[0]} [CPU, {precision}{extra}]"
        outputs = [next(p for p in compiled.outputs if name in p.get_names())
                   for name in self.output_names]
        return _Compiled(compiled, idle, outputs, hint, callers, streams)

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        state = self._state
        try:
            request = state.idle.get_nowait()
        except queue.Empty:  # every request is busy in another thread
            request = state.model.create_infer_request()
        try:
            results = request.infer(feeds)
            return [np.array(results[port]) for port in state.outputs]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO failed to run the model: {first}") from None
        finally:
            state.idle.put(request)


def _dims_and_dtype(port) -> tuple[list[int | None], str | None]:
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    try:
        dtype = np.dtype(port.get_element_type().to_dtype()).name
    except (RuntimeError, TypeError):  # an element type numpy has no name for
        dtype = None
    return dims, dtype
