"""OpenVINO backend: compiles the IR for the CPU with the manifest's threads and hints.

An infer request runs one inference at a time, so concurrent `infer` calls (several pipeline
threads sharing one Model) each take an idle request from a pool, creating one when none is
free; the compiled model is shared, so a request costs only its own buffers.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import openvino as ov

from edge_sdk.backends.model_io import check_model_io
from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest


class OpenVinoBackend:
    uses_cache = True  # compiled blobs in the device's cache folder skip recompiling

    def __init__(self, manifest: Manifest, model_path: Path, cache_dir: Path | None = None
                 ) -> None:
        rt = manifest.runtime  # options: allow-listed by the manifest schema
        config = {"INFERENCE_NUM_THREADS": rt.threads, "PERFORMANCE_HINT": "LATENCY",
                  **rt.options}
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot use the compile cache folder {cache_dir}: "
                                   f"{exc.strerror}; fix its permissions or unset it") from None
            config["CACHE_DIR"] = str(cache_dir)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(str(model_path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with long C++ traces
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO could not load {model_path.name}: {first}") from None
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(self.compiled.create_infer_request())
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.to_string() if hasattr(precision, "to_string") else precision
        self.name = f"openvino {ov.get_version().split('-')[0]} [CPU, {precision}]"
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [o.name for o in manifest.outputs]
        inputs = {name: _dims_and_dtype(port) for port in self.compiled.inputs
                  for name in port.get_names()}
        check_model_io(manifest, inputs,
                       [n for p in self.compiled.outputs for n in p.get_names()], model_path)
        self._outputs = [self._find_output(name) for name in self.output_names]

    def _find_output(self, name: str):
        return next(port for port in self.compiled.outputs if name in port.get_names())

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:  # every request is busy in another thread
            request = self.compiled.create_infer_request()
        try:
            results = request.infer(feeds)
            return [np.array(results[port]) for port in self._outputs]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO failed to run the model: {first}") from None
        finally:
            self._idle.put(request)


def _dims_and_dtype(port) -> tuple[list[int | None], str | None]:
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    try:
        dtype = np.dtype(port.get_element_type().to_dtype()).name
    except (RuntimeError, TypeError):  # an element type numpy has no name for
        dtype = None
    return dims, dtype
