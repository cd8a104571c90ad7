"""Non-maximum suppression and the post-processing every detection decoder shares.

NMS itself is OpenCV's (`cv2.dnn.NMSBoxes` / `NMSBoxesBatched`), a maintained C++
implementation we already ship; this module only adapts array shapes and works around one
quirk. Each decoder only reshapes its model's outputs into (boxes, scores, class ids) and hands
them to `DetectionDecoder._finish`, so thresholds, label lookup and frame mapping are one code path.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections

# Like Ultralytics' `max_nms`: cap on candidates entering NMS, so a model that fires everywhere
# (e.g. an untrained or badly quantized one) cannot make one frame take seconds.
MAX_CANDIDATES = 30000


def nms(
    xyxy: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
    max_detections: int = 0,
) -> np.ndarray:
    """Indices of the boxes NMS keeps, best score first (ties keep input order).

    With `class_ids`, boxes only suppress boxes of their own class. A box is dropped when its
    IoU with a kept, higher-scoring box is greater than `iou_threshold`. Scores must be > 0
    (OpenCV drops the others). `max_detections` > 0 truncates the result *after* NMS (OpenCV's
    own `top_k` truncates candidates before it, which would drop boxes NMS would have kept).
    """
    if len(xyxy) == 0:
        return np.zeros((0,), np.int64)
    boxes = np.asarray(xyxy, np.float64)
    # Translate so every coordinate is >= 0: IoU does not change, and NMSBoxesBatched offsets
    # classes by (largest coordinate + 1), which lets boxes of different classes overlap (and
    # suppress each other) when some coordinates are negative.
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2] - boxes[:, :2].min()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    scores32 = np.ascontiguousarray(scores, np.float32)
    if class_ids is None:
        keep = cv2.dnn.NMSBoxes(xywh, scores32, 0.0, float(iou_threshold))
    else:
        ids = np.ascontiguousarray(class_ids, np.int32)
        keep = cv2.dnn.NMSBoxesBatched(xywh, scores32, ids, 0.0, float(iou_threshold))
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[:max_detections] if max_detections > 0 else keep


class DetectionDecoder:
    """Base of the detection decoders: validated thresholds and the shared finishing step."""

    task = "detect"

    def __init__(
        self,
        labels: tuple[str, ...] = (),
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        class_agnostic: bool = False,
        num_classes: int | None = None,
        score_shift: float = 0.0,
    ) -> None:
        name = type(self).__name__
        if not _is_number(score_shift, -MAX_SCORE_SHIFT, MAX_SCORE_SHIFT):
            raise ManifestError(f"{name}: score_shift must be a number in "
                                f"[-{MAX_SCORE_SHIFT:g}, {MAX_SCORE_SHIFT:g}], got {score_shift!r}")
        for key, value in (("conf_threshold", conf_threshold), ("iou_threshold", iou_threshold)):
            if not _is_number(value, 0.0, 1.0):
                raise ManifestError(f"{name}: {key} must be a number in [0, 1], got {value!r}")
        for key, value in (("max_detections", max_detections), ("num_classes", num_classes)):
            if key == "num_classes" and value is None:
                continue  # optional: only checked against the output when given
            if not (isinstance(value, int) and _is_number(value, 1, float("inf"))):
                raise ManifestError(f"{name}: {key} must be a positive integer, got {value!r}")
        if not isinstance(class_agnostic, bool):
            raise ManifestError(f"{name}: class_agnostic must be true or false")
        self.labels = tuple(labels)
        self.conf_threshold = float(conf_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = max_detections
        self.class_agnostic = class_agnostic
        self.num_classes = num_classes
        self.score_shift = float(score_shift)
        # Thresholding the model's own scores at this value keeps what the shifted scores
        # would keep above conf_threshold (the shift is monotone): one comparison per row.
        self._threshold = (float(shift_scores(self.conf_threshold, -self.score_shift))
                           if self.score_shift else self.conf_threshold)

    def _finish(
        self,
        xyxy: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
        transform: FrameTransform,
        run_nms: bool = True,
        data: dict[str, np.ndarray] | None = None,
    ) -> Detections:
        """Threshold, NMS (unless the model did it), keep the best, map to frame pixels.

        `xyxy` is in model-input pixels. Keeps scores strictly above `conf_threshold`, as
        Ultralytics does. A box with no area once mapped to the frame (in the letterbox
        padding, or degenerate) is dropped before NMS and the `max_detections` cut, so it
        cannot take the place of a real one. `data` holds per-row arrays (keypoints, mask
        coefficients) that follow their boxes, still in model-input terms.
        """
        keep = scores > self._threshold
        xyxy, scores, class_ids = xyxy[keep], scores[keep], class_ids[keep]
        if self.score_shift:
            scores = shift_scores(scores, self.score_shift)
        data = {k: v[keep] for k, v in (data or {}).items()}
        if len(scores) > MAX_CANDIDATES:
            top = np.argpartition(-scores, MAX_CANDIDATES - 1)[:MAX_CANDIDATES]
            xyxy, scores, class_ids = xyxy[top], scores[top], class_ids[top]
            data = {k: v[top] for k, v in data.items()}
        framed = transform.to_frame(np.asarray(xyxy, np.float32))
        real = (framed[:, 2] > framed[:, 0]) & (framed[:, 3] > framed[:, 1])
        xyxy, framed, scores, class_ids = xyxy[real], framed[real], scores[real], class_ids[real]
        data = {k: v[real] for k, v in data.items()}
        if run_nms:
            ids = None if self.class_agnostic else class_ids
            order = nms(xyxy, scores, self.iou_threshold, ids, self.max_detections)
        else:
            order = np.argsort(-scores, kind="stable")[: self.max_detections]
        class_ids = class_ids[order].astype(np.int64)
        return Detections(
            xyxy=framed[order],
            scores=scores[order].astype(np.float32),
            class_ids=class_ids,
            labels=self._labels_for(class_ids),
            data={k: v[order] for k, v in data.items()},
        )

    def _labels_for(self, class_ids: np.ndarray) -> tuple[str, ...] | None:
        """Label per box; an id beyond the labels list gets its number, like `topk` does."""
        if not self.labels:
            return None
        names = np.asarray(self.labels, dtype=object)
        known = (class_ids >= 0) & (class_ids < len(names))
        out = np.where(known, names[np.clip(class_ids, 0, len(names) - 1)], class_ids.astype(str))
        return tuple(str(x) for x in out.tolist())

    def _check_classes(self, found: int, layout: str) -> None:
        if self.num_classes is not None and found != self.num_classes:
            raise ManifestError(
                f"{type(self).__name__}: output has {found} classes in layout {layout}, "
                f"but the manifest says num_classes={self.num_classes}"
            )


MAX_SCORE_SHIFT = 4.0  # logits; a quantized model further off than this is not recalibrated


def shift_scores(scores, shift: float):
    """Probabilities moved by `shift` on the logit scale: sigmoid(logit(p) + shift).

    The score calibration edge-opt fits for an int8 detector (optimize/score_calibration.py):
    int8 can move a detector's confident scores down as a whole, and the deployed threshold
    then drops real objects. 0 and 1 stay where they are."""
    if not shift:
        return scores
    p = np.asarray(scores, np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        moved = 1.0 / (1.0 + np.exp(-shift) * (1.0 - p) / p)
    return np.where(p <= 0.0, 0.0, np.where(p >= 1.0, 1.0, moved)).astype(np.float32)


def _is_number(value: object, low: float, high: float) -> bool:
    """A JSON number (not a bool) within [low, high]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def single_image(output: np.ndarray, ndim: int, name: str, expected: str) -> np.ndarray:
    """Drop the batch axis of a (1, ...) output; a decoder handles one image at a time."""
    array = np.asarray(output)
    if array.ndim == ndim and array.shape[0] == 1:
        return array[0]
    raise ManifestError(f"{name}: expected an output of shape {expected}, got {array.shape}")
