"""The `raw` decoder: no interpretation, the outputs by name (task `raw`)."""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import RawOutputs


@register_decoder("raw")
class Raw:
    task = "raw"

    def __init__(self, labels: tuple[str, ...] = (), output_names: list[str] | None = None):
        if output_names is not None and not (
                isinstance(output_names, list) and all(isinstance(n, str) for n in output_names)):
            raise ManifestError("raw: output_names must be a list of strings")
        self.output_names = output_names

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> RawOutputs:
        names = self.output_names or [f"output{k}" for k in range(len(outputs))]
        if len(names) != len(outputs):
            raise ManifestError(f"raw: the manifest names {len(names)} outputs, the model "
                                f"returned {len(outputs)}")
        return RawOutputs({n: np.asarray(o) for n, o in zip(names, outputs)})
