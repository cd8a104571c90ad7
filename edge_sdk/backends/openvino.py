"""OpenVINO backend: compiles the IR for the CPU with the manifest's threads and hints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest


class OpenVinoBackend:
    def __init__(self, manifest: Manifest, model_path: Path) -> None:
        rt = manifest.runtime
        config = {"INFERENCE_NUM_THREADS": rt.threads, "PERFORMANCE_HINT": "LATENCY",
                  **rt.options}
        try:
            core = ov.Core()
            self.compiled = core.compile_model(str(model_path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with long C++ traces
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO could not load {model_path.name}: {first}") from None
        self.request = self.compiled.create_infer_request()
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.to_string() if hasattr(precision, "to_string") else precision
        self.name = f"openvino {ov.get_version().split('-')[0]} [CPU, {precision}]"
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [o.name for o in manifest.outputs]
        self._outputs = [self._find_output(name, i) for i, name in enumerate(self.output_names)]

    def _find_output(self, name: str, index: int):
        for port in self.compiled.outputs:
            if name in port.get_names():
                return port
        return self.compiled.outputs[index]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            results = self.request.infer(feeds)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"OpenVINO failed to run the model: {first}") from None
        return [np.array(results[port]) for port in self._outputs]
