"""onnxruntime backend: TensorRT -> CUDA -> CPU, whichever of the manifest's providers exist."""

from __future__ import annotations

import os
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

    uses_cache = True  # TensorRT's engine and timing caches (see provider_options)

    def __init__(self, manifest: Manifest, model_path: Path, cache_dir: Path | None = None
                 ) -> None:
        rt = manifest.runtime
        available = ort.get_available_providers()
        wanted = list(rt.providers) or ["CPUExecutionProvider"]
        self.missing_providers = [p for p in wanted if p not in available]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        options = session_options(rt.threads, rt.options.get("intra_op_allow_spinning", False))
        provider_args = [(p, provider_options(rt.provider_options.get(p, {}), manifest,
                                              cache_dir)) for p in providers]
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


def provider_options(options: dict, manifest: Manifest, cache_dir: Path | None) -> dict:
    """The manifest's provider options, with every path (TensorRT's engine and timing caches)
    in this device's cache folder, one subfolder per model (by its sha256).

    Never in the bundle, where the manifest once put them: TensorRT loads an engine it finds
    in its cache instead of building one from the model, and an engine file in the bundle is
    covered by neither the manifest's hashes nor its signature (a swapped engine would run
    another model); and a bundle in a read-only store could not be written to.
    `cache_dir`: the device's (`load(cache_dir=)`, $EDGE_SDK_CACHE_DIR), else
    $XDG_CACHE_HOME/edge-sdk or ~/.cache/edge-sdk (building an engine takes minutes: a device
    without a cache would pay that at every start).
    """
    paths = [key for key in options if key.endswith("_path")]
    if not paths:
        return dict(options)
    root = cache_dir if cache_dir is not None else default_cache_dir()
    folder = Path(root) / "tensorrt" / manifest.files["model"].sha256[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot use the cache folder {folder} for TensorRT engines: "
                           f"{exc.strerror or exc}; set EDGE_SDK_CACHE_DIR to a writable "
                           "folder") from None
    return {**options, **{key: str(folder) for key in paths}}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-sdk"


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
