"""SSD-style heads: per-anchor boxes (1, N, 4) normalized to [0, 1] and class scores (1, N, C).

Normalized boxes say nothing about the input size, so the manifest gives it (`input_hw`); the
preprocessing transform then maps input pixels to frame pixels as for every other decoder.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.decoders.nms import DetectionDecoder, single_image
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections

BOX_FORMATS = ("yxyx", "xyxy")  # yxyx: TensorFlow Object Detection API order


@register_decoder("ssd")
class Ssd(DetectionDecoder):
    """Outputs [boxes, scores] (either order; boxes are the one whose last axis is 4).

    `background=True` means score column 0 is a background class: it is ignored and class ids
    count from the first real class (column 1 -> class 0), so labels list real classes only.
    Scores are used as given (probabilities); NMS runs here, class-aware unless `class_agnostic`.
    """

    def __init__(
        self,
        labels: tuple[str, ...] = (),
        *,
        input_hw: list[int] | tuple[int, int] | None = None,
        box_format: str = "yxyx",
        background: bool = False,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        class_agnostic: bool = False,
        num_classes: int | None = None,
        score_shift: float = 0.0,
    ) -> None:
        super().__init__(
            labels, conf_threshold, iou_threshold, max_detections, class_agnostic, num_classes,
            score_shift,
        )
        if (
            not isinstance(input_hw, (list, tuple))
            or len(input_hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_hw)
        ):
            raise ManifestError(
                "ssd: params.input_hw must be the model input [height, width] in pixels "
                f"(normalized boxes are scaled by it), got {input_hw!r}"
            )
        if box_format not in BOX_FORMATS:
            raise ManifestError(
                f"ssd: box_format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}"
            )
        if not isinstance(background, bool):
            raise ManifestError("ssd: background must be true or false")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.box_format = box_format
        self.background = background

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        if len(outputs) != 2:
            raise ManifestError(
                f"ssd: expected 2 outputs, boxes (1, N, 4) and scores (1, N, C), got {len(outputs)}"
            )
        first, second = (np.asarray(o) for o in outputs)
        if first.shape[-1:] != (4,) and second.shape[-1:] == (4,):
            first, second = second, first
        boxes = single_image(first, 3, "ssd", "(1, N, 4) for boxes").astype(np.float32)
        scores = single_image(second, 3, "ssd", "(1, N, C) for scores").astype(np.float32)
        min_columns = 2 if self.background else 1
        if boxes.shape[1] != 4 or len(scores) != len(boxes) or scores.shape[1] < min_columns:
            raise ManifestError(
                f"ssd: expected boxes (1, N, 4) and scores (1, N, C) with C >= {min_columns}, "
                f"got {first.shape} and {second.shape}"
            )
        if self.background:
            scores = scores[:, 1:]
        self._check_classes(scores.shape[1], "(1, N, 1+C)" if self.background else "(1, N, C)")
        if self.box_format == "yxyx":
            boxes = boxes[:, [1, 0, 3, 2]]
        height, width = self.input_hw
        xyxy = boxes * np.array([width, height, width, height], np.float32)
        best = scores.argmax(axis=1)
        best_scores = np.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        return self._finish(xyxy, best_scores, best, transform)
