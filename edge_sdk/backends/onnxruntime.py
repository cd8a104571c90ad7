"""onnxruntime backend: TensorRT -> CUDA -> CPU, whichever of the manifest's providers exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """How edge_sdk runs a model (benchmarks that time raw sessions use the same)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Spinning worker threads burn the cores the capture and sink threads need; measured
    # here: bare-loop fps 40.9 -> 69.8 (classifier) with spinning off under load.
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if spinning else "0")
    return options


class OrtBackend:
    def __init__(self, manifest: Manifest, model_path: Path) -> None:
        rt = manifest.runtime
        available = set(ort.get_available_providers())
        wanted = list(rt.providers) or ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        options = session_options(rt.threads, rt.options.get("intra_op_allow_spinning", False))
        provider_args = [(p, rt.provider_options.get(p, {})) for p in providers]
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=provider_args
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise BackendError(
                f"onnxruntime could not load {model_path.name}: {first_line}"
            ) from None
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime {ort.__version__} [{', '.join(self.providers)}]"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in manifest.outputs]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as exc:  # e.g. a kernel this onnxruntime version lacks
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"onnxruntime {ort.__version__} failed to run the model: {first}"
                               ) from None
