"""edge_sdk: the on-device runtime. Load a bundle, run it, hand results to sinks.

    import edge_sdk
    model = edge_sdk.load("out/x86-int8")
    result = model.predict(frame_bgr)
    for r in edge_sdk.Pipeline("video.mp4", model, tracker="bytetrack", sinks=[...]):
        ...
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
from edge_sdk.metrics import MetricsSnapshot, StatusUpdate
from edge_sdk.model import Model, load
from edge_sdk.multisource import MultiPipeline, StreamSpec
from edge_sdk.pipeline import FrameResult, Pipeline, StreamInfo
from edge_sdk.results import Classification, Detections, RawOutputs, Segmentation
from edge_sdk.sinks import AnnotatedVideoSink, CallbackSink, JsonlSink, Sink
from edge_sdk.sources import Source, VideoFrame, open_source

__version__ = "0.1.0"

__all__ = [
    "AnnotatedVideoSink",
    "BackendError",
    "BundleError",
    "CallbackSink",
    "Classification",
    "Detections",
    "EdgeError",
    "FrameResult",
    "HashMismatchError",
    "InputError",
    "JsonlSink",
    "ManifestError",
    "MetricsSnapshot",
    "Model",
    "MultiPipeline",
    "Pipeline",
    "RawOutputs",
    "Segmentation",
    "Sink",
    "Source",
    "SourceError",
    "StatusUpdate",
    "StreamInfo",
    "StreamSpec",
    "VideoFrame",
    "load",
    "open_source",
    "__version__",
]
