"""Decoders turn raw model outputs into results; one module per model family.

A decoder is a class registered under a name; the manifest's `task.decoder` picks it and
`task.params` are passed to its constructor, so adding a model family never touches the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Classification, Detections


class Decoder(Protocol):
    task: str  # "classify", "detect", "segment", "pose" or "raw"

    def __call__(
        self, outputs: list[np.ndarray], transform: FrameTransform
    ) -> Classification | Detections: ...


DecoderFactory = Callable[..., Decoder]
_REGISTRY: dict[str, DecoderFactory] = {}


def register_decoder(name: str) -> Callable[[DecoderFactory], DecoderFactory]:
    def add(factory: DecoderFactory) -> DecoderFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def decoder_names() -> list[str]:
    return sorted(_REGISTRY)


def build_decoder(name: str, params: dict, labels: tuple[str, ...] = ()) -> Decoder:
    if name not in _REGISTRY:
        known = ", ".join(decoder_names())
        raise ManifestError(f"unknown decoder {name!r} in manifest; this runtime knows: {known}")
    try:
        return _REGISTRY[name](labels=labels, **params)
    except TypeError as exc:
        raise ManifestError(f"bad parameters for decoder {name!r}: {exc}") from None


# Importing the family modules registers them.
from edge_sdk.decoders import (  # noqa: E402,F401
    classify,
    db_text,
    pose,
    raw,
    segment,
    ssd,
    yolo,
    yolo_seg,
)
