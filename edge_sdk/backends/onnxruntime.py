"""onnxruntime backend: TensorRT -> CUDA -> CPU, whichever of the manifest's providers exist."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_sdk.backends.model_io import check_model_io
from edge_sdk.errors import BackendError, ProviderWarning
from edge_sdk.manifest import Manifest

ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int8)": "int8"}


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
    """One session; `InferenceSession.run` is thread-safe, so concurrent `infer` calls share it.

    The manifest's providers are used in its order where this onnxruntime build has them;
    `providers` says which really run and `missing_providers` which were asked for but absent
    (a warning says so once per process, with how to install the right build)."""

    def __init__(self, manifest: Manifest, model_path: Path) -> None:
        rt = manifest.runtime
        available = ort.get_available_providers()
        wanted = list(rt.providers) or ["CPUExecutionProvider"]
        self.missing_providers = [p for p in wanted if p not in available]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        options = session_options(rt.threads, rt.options.get("intra_op_allow_spinning", False))
        provider_args = [(p, _provider_options(rt.provider_options.get(p, {}), model_path))
                         for p in providers]
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
        inputs = {i.name: ([d if isinstance(d, int) else None for d in i.shape],
                           ONNX_TYPES.get(i.type)) for i in self.session.get_inputs()}
        check_model_io(manifest, inputs, [o.name for o in self.session.get_outputs()],
                       model_path)
        if self.missing_providers:
            warn_missing_providers(manifest, self.missing_providers, self.providers)

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as exc:  # e.g. a kernel this onnxruntime version lacks
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"onnxruntime {ort.__version__} failed to run the model: {first}"
                               ) from None


def _provider_options(options: dict, model_path: Path) -> dict:
    """A provider option naming a path (TensorRT's engine and timing caches) is kept next to
    the model, inside the bundle, not wherever the process runs (the manifest schema allows
    only relative paths without `..`)."""
    return {key: str(model_path.parent / value) if key.endswith("_path") else value
            for key, value in options.items()}


JETPACK_HINT = (
    "on a Jetson, install NVIDIA's JetPack build of onnxruntime-gpu (it has the TensorRT and "
    "CUDA providers; the PyPI wheel does not): pip uninstall onnxruntime && pip install "
    "onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.io/jp6/cu126 (JetPack 6; see "
    "https://elinux.org/Jetson_Zoo#ONNX_Runtime for other JetPack versions)"
)
_warned: set[tuple[str, ...]] = set()


def warn_missing_providers(manifest: Manifest, missing: list[str], running: list[str]) -> None:
    """Say once per process (per set of missing providers) that the bundle runs slower than
    its profile expects, and how to fix it."""
    key = tuple(missing)
    if key in _warned:
        return
    _warned.add(key)
    jetson = "TensorrtExecutionProvider" in missing or manifest.profile.startswith("jetson")
    hint = JETPACK_HINT if jetson else (
        "install the onnxruntime build that has them (e.g. onnxruntime-gpu for CUDA)")
    warnings.warn(
        f"bundle {manifest.target} asks for {', '.join(missing)}, which this onnxruntime "
        f"{ort.__version__} does not have; running on {', '.join(running)} instead (much "
        f"slower than the profile expects). To fix: {hint}",
        ProviderWarning,
        stacklevel=2,
    )
