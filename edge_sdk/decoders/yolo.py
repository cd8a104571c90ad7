"""Ultralytics YOLO export layouts: v5 (objectness), v8/v11 (no objectness), NMS in the graph.

Boxes leave the model in input pixels; `DetectionDecoder._finish` thresholds them, runs NMS
where the graph did not, and maps them to the frame through the preprocessing transform.
"""

from __future__ import annotations

import math

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.decoders.nms import DetectionDecoder, single_image
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _best_class(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, class id) of each row's best class: one label per box, as Ultralytics predicts."""
    ids = class_scores.argmax(axis=1)
    return np.take_along_axis(class_scores, ids[:, None], axis=1)[:, 0], ids


@register_decoder("yolov5")
class YoloV5(DetectionDecoder):
    """(1, N, 5+C): cx, cy, w, h, objectness, C class probabilities; score = obj * class."""

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        rows = single_image(outputs[0], 3, "yolov5", "(1, N, 5+C)").astype(np.float32)
        if rows.shape[1] < 6:
            raise ManifestError(
                f"yolov5: expected an output of shape (1, N, 5+C) with C >= 1, got {rows.shape}"
            )
        self._check_classes(rows.shape[1] - 5, "(1, N, 5+C)")
        refuse_nms_rows("yolov5", rows.shape, transform)
        class_score, class_ids = _best_class(rows[:, 5:])
        scores = rows[:, 4] * class_score
        return self._finish(cxcywh_to_xyxy(rows[:, :4]), scores, class_ids, transform)


@register_decoder("yolov8")
class YoloV8(DetectionDecoder):
    """(1, 4+C, N) as exported by Ultralytics v8/v11 (or transposed (1, N, 4+C)): no objectness.

    Without `num_classes`, the shorter axis is taken as the channel axis: true of every real
    model (N is thousands of anchors), ambiguous only for toy outputs.
    """

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        out = single_image(outputs[0], 3, "yolov8", "(1, 4+C, N) or (1, N, 4+C)")
        rows = self._rows(out)
        if rows is out:  # read as (1, N, 4+C), the layout NMS rows share
            refuse_nms_rows("yolov8", rows.shape, transform)
        rows = rows.astype(np.float32)
        class_score, class_ids = _best_class(rows[:, 4:])
        return self._finish(cxcywh_to_xyxy(rows[:, :4]), class_score, class_ids, transform)

    def _rows(self, out: np.ndarray) -> np.ndarray:
        """(N, 4+C) whichever way round the export put it."""
        a, b = out.shape
        if self.num_classes is not None:
            channels = 4 + self.num_classes
            if a == channels:
                return out.T
            if b == channels:
                return out
            raise ManifestError(
                f"yolov8: num_classes={self.num_classes} needs an output of shape "
                f"(1, {channels}, N) or (1, N, {channels}), got (1, {a}, {b})"
            )
        channels_first = a <= b
        if (a if channels_first else b) < 5:
            raise ManifestError(
                f"yolov8: expected an output of shape (1, 4+C, N) with C >= 1, got (1, {a}, {b})"
            )
        return out.T if channels_first else out


@register_decoder("yolo-nms")
class YoloNms(DetectionDecoder):
    """Exports with NMS in the graph; only the score threshold and `max_detections` apply here.

    Accepts Ultralytics end2end / `nms=True` output (1, max_det, 6+) = x1, y1, x2, y2, score,
    class (extra columns such as mask coefficients are ignored), or the four outputs of
    TensorRT's EfficientNMS plugin: num_dets (1, 1), boxes (1, K, 4) x1y1x2y2, scores (1, K),
    classes (1, K), in that order.
    """

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        if len(outputs) == 1:
            rows = single_image(outputs[0], 3, "yolo-nms", "(1, max_det, 6)").astype(np.float32)
            if rows.shape[1] < 6:
                raise ManifestError(
                    f"yolo-nms: expected an output of shape (1, max_det, 6), got {rows.shape}"
                )
            self._refuse_raw_head(rows.shape, transform)
            xyxy, scores, class_ids = rows[:, :4], rows[:, 4], rows[:, 5]
        elif len(outputs) == 4:
            xyxy, scores, class_ids = _efficient_nms(outputs)
        else:
            raise ManifestError(
                f"yolo-nms: expected 1 output (1, max_det, 6) or 4 EfficientNMS outputs "
                f"(num_dets, boxes, scores, classes), got {len(outputs)} outputs"
            )
        class_ids = np.rint(class_ids).astype(np.int64)
        self._check_class_ids(scores, class_ids)
        return self._finish(xyxy, scores, class_ids, transform, run_nms=False)

    def _check_class_ids(self, scores: np.ndarray, class_ids: np.ndarray) -> None:
        """A class the bundle does not name means its labels (or num_classes) are not the
        model's: results would mix names and numbers, or name the wrong class. Refused, as
        the other decoders refuse an output of the wrong class count; the NMS rows' count
        is not in their shape, so it is checked on the rows kept."""
        classes = self.num_classes if self.num_classes is not None else len(self.labels)
        if not classes:
            return
        bad = (scores > self._threshold) & ((class_ids < 0) | (class_ids >= classes))
        if bad.any():
            named = (f"says num_classes={classes}" if self.num_classes is not None
                     else f"names {classes} class{'' if classes == 1 else 'es'} in its labels")
            raise ManifestError(
                f"yolo-nms: the model gave class id {int(class_ids[bad][0])}, but the bundle "
                f"{named}: they are not the model's; export it with one name per class, in "
                "the model's order (edge-opt --labels FILE)"
            )

    def _refuse_raw_head(self, shape: tuple[int, int], transform: FrameTransform) -> None:
        """A head before NMS, (1, 4+C, N) or (1, N, 5+C), also has six or more columns, and
        read as NMS rows it gives boxes of nonsense with no error; its N is the input's anchor
        count, which no max_det is. Needs the input size (edge-run and export give it)."""
        if not (transform.input_w and transform.input_h):
            return
        anchors = anchor_counts(transform.input_h, transform.input_w)
        k, d = shape
        if d in anchors:
            n, layout, fits = d, "(1, 4+C, N)", "yolov8"
        elif k in anchors:
            n, layout = k, "(1, N, 4+C) or (1, N, 5+C)"
            fits = "yolov5" if self.num_classes is not None and d == 5 + self.num_classes else (
                "yolov8" if self.num_classes is not None else "yolov8 (or yolov5 with objectness)")
        else:
            return
        raise ManifestError(
            f"yolo-nms: output (1, {k}, {d}) is a YOLO head before NMS, {layout} with N = {n} "
            f"anchors of the {transform.input_w}x{transform.input_h} input, not NMS rows "
            f"(1, max_det, 6); use decoder {fits}"
        )


def refuse_nms_rows(name: str, shape: tuple[int, int], transform: FrameTransform) -> None:
    """Ultralytics' NMS output (1, 300, 6) = x1, y1, x2, y2, score, class also reads as a
    one- or two-class head (1, N, 5+C) / (1, N, 4+C); the bundle then reports boxes of
    nonsense. A head's N is the input's anchor count, which no max_det is. Needs the input
    size (edge-run and export give it)."""
    k, d = shape
    if d != 6 or not (transform.input_w and transform.input_h):
        return
    if k in anchor_counts(transform.input_h, transform.input_w):
        return
    raise ManifestError(
        f"{name}: output (1, {k}, 6) looks like NMS rows x1, y1, x2, y2, score, class "
        f"({k} is no anchor count of the {transform.input_w}x{transform.input_h} input); "
        "use decoder yolo-nms"
    )


def anchor_counts(height: int, width: int) -> set[int]:
    """Rows a YOLO head has before NMS for this input: one per cell of the stride 8, 16, 32
    (and 64, P6 models) grids (v8/v11), three per cell (v5)."""
    counts = set()
    for strides in ((8, 16, 32), (8, 16, 32, 64)):
        cells = sum(math.ceil(height / s) * math.ceil(width / s) for s in strides)
        counts |= {cells, 3 * cells}
    return counts


def _efficient_nms(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, scores and classes of the first num_dets rows of EfficientNMS-style outputs."""
    arrays = [np.asarray(o) for o in outputs]
    shapes = [a.shape for a in arrays]
    num, boxes, scores, classes = arrays
    k = boxes.shape[1] if boxes.ndim == 3 else -1
    if not (
        num.size == 1
        and boxes.shape == (1, k, 4)
        and scores.shape == (1, k)
        and classes.shape == (1, k)
    ):
        raise ManifestError(
            "yolo-nms: expected EfficientNMS outputs num_dets (1, 1), boxes (1, K, 4), "
            f"scores (1, K), classes (1, K), got shapes {shapes}"
        )
    n = int(np.clip(num.reshape(-1)[0], 0, k))
    return (
        boxes[0, :n].astype(np.float32),
        scores[0, :n].astype(np.float32),
        classes[0, :n].astype(np.float32),
    )
