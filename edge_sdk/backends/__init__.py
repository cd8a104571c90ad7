"""Inference backends, one module per runtime, behind one small interface.

Modules are imported only when a manifest asks for them, so a device needs just the one
runtime its bundles use (onnxruntime, openvino or LiteRT).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest


class Backend(Protocol):
    name: str  # what actually runs the model, e.g. "onnxruntime 1.32.0 [CPUExecutionProvider]"
    input_names: list[str]
    output_names: list[str]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; outputs in manifest order."""
        ...


# backend name in the manifest -> (module, class, pip hint)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("edge_sdk.backends.onnxruntime", "OrtBackend", "onnxruntime==1.32.0"),
    "openvino": ("edge_sdk.backends.openvino", "OpenVinoBackend", "openvino==2026.4.1"),
    "litert": ("edge_sdk.backends.litert", "LiteRTBackend", "ai-edge-litert==2.3.0"),
}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(manifest: Manifest, model_path: Path, cache_dir: Path | None = None
                   ) -> Backend:
    """The manifest's backend for `model_path`; `cache_dir` keeps compiled models for the
    runtimes that can reuse them (OpenVINO's compiled models, TensorRT's engines), and is
    ignored by the others."""
    name = manifest.runtime.backend
    if name not in _BACKENDS:
        raise BackendError(
            f"bundle wants backend {name!r}; this edge_sdk knows {', '.join(backend_names())}"
        )
    module_name, class_name, pip_hint = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(
            f"bundle needs the {name} runtime, which is not installed ({exc.name}); "
            f"install it with: pip install {pip_hint}"
        ) from None
    cls = getattr(module, class_name)
    if cache_dir is not None and getattr(cls, "uses_cache", False):
        return cls(manifest, model_path, cache_dir=cache_dir)
    return cls(manifest, model_path)
