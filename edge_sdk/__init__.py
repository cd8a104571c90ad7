"""edge_sdk: the on-device runtime. Load a bundle, run it, hand results to sinks.

    import edge_sdk
    model = edge_sdk.load("out/x86-int8")
    result = model.predict(frame_bgr)
"""

from __future__ import annotations

from edge_sdk.errors import (
    BackendError,
    BundleError,
    EdgeError,
    HashMismatchError,
    InputError,
    ManifestError,
    SourceError,
)
from edge_sdk.model import Model, load
from edge_sdk.results import Classification, Detections

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BundleError",
    "Classification",
    "Detections",
    "EdgeError",
    "HashMismatchError",
    "InputError",
    "ManifestError",
    "Model",
    "SourceError",
    "load",
    "__version__",
]
