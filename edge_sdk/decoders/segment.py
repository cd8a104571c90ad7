"""Semantic segmentation: a dense per-class map, [1, C, H, W] or [1, H, W, C] (or [1, H, W]).

C > 1: the class of a pixel is the channel with the highest score. C = 1 (or no channel
axis): a foreground probability, class 1 where it exceeds `threshold` (give `sigmoid: true`
for logits). The class map is resized onto the frame through the preprocessing geometry.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.decoders.dense import to_frame
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Segmentation

LAYOUTS = ("auto", "NCHW", "NHWC")


@register_decoder("semantic-map")
class SemanticMap:
    task = "segment"

    def __init__(self, labels: tuple[str, ...] = (), threshold: float = 0.5,
                 sigmoid: bool = False, layout: str = "auto", output: int = 0) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ManifestError(f"semantic-map: threshold must be a number, got {threshold!r}")
        if not isinstance(sigmoid, bool):
            raise ManifestError("semantic-map: sigmoid must be true or false")
        if layout not in LAYOUTS:
            raise ManifestError(f"semantic-map: layout must be one of {', '.join(LAYOUTS)}, "
                                f"got {layout!r}")
        if isinstance(output, bool) or not isinstance(output, int) or output < 0:
            raise ManifestError(f"semantic-map: output must be an output index, got {output!r}")
        self.labels = tuple(labels)
        self.threshold = float(threshold)
        self.sigmoid = sigmoid
        self.layout = layout
        self.output = output

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Segmentation:
        if self.output >= len(outputs):
            raise ManifestError(f"semantic-map: output {self.output} asked for, the model has "
                                f"{len(outputs)}")
        out = np.asarray(outputs[self.output])
        scores = self.channels_first(out)
        _check_map(scores.shape[1:], out.shape, transform)
        if len(scores) == 1:
            prob = scores[0].astype(np.float32)
            if self.sigmoid:
                prob = 1.0 / (1.0 + np.exp(-prob))
            prob = to_frame(prob, transform, nearest=False)
            class_map = (prob > self.threshold).astype(np.int32)
        else:
            class_map = to_frame(scores.argmax(axis=0).astype(np.int32), transform, nearest=True)
        return Segmentation(class_map=class_map, labels=self.labels)

    def channels_first(self, out: np.ndarray) -> np.ndarray:
        """(C, H, W) of one image, whichever layout the model wrote."""
        if out.ndim == 3 and out.shape[0] == 1:
            return out
        if out.ndim != 4 or out.shape[0] != 1:
            raise ManifestError("semantic-map: expected an output of shape [1, C, H, W], "
                                f"[1, H, W, C] or [1, H, W], got {list(out.shape)}")
        layout = self.layout
        if layout == "auto":  # the class axis is the short one: maps are tens of pixels wide
            layout = "NCHW" if out.shape[1] <= out.shape[3] else "NHWC"
        return out[0] if layout == "NCHW" else out[0].transpose(2, 0, 1)


def _check_map(hw: tuple[int, ...], shape: tuple[int, ...], transform: FrameTransform) -> None:
    """A class or score map is an image of the input: at least 2 x 2 and, when the input size
    is known, of the input's shape (any stride, a pixel of rounding either way). Without this
    a classifier's [1, 1, 1000] or a detector's [1, 5, 8400] exported with --task segment."""
    h, w = hw
    in_h, in_w = transform.input_h, transform.input_w
    if min(h, w) >= 2 and (not (in_h and in_w) or abs(h * in_w - w * in_h) <= max(in_h, in_w)):
        return
    size = f" of the {in_w}x{in_h} input" if in_h and in_w else ""
    if min(h, w) < 2:
        fits = " but one score per class, a classifier's: use --task classify"
    elif len(shape) == 3 and max(h, w) >= 8 * min(h, w):
        fits = " but a detector's per-anchor rows: use --task detect with its decoder (e.g. yolov8)"
    else:
        fits = "; use --task raw to keep its bare tensors"
    raise ManifestError(f"semantic-map: output {list(shape)} is not a map{size}{fits}")
