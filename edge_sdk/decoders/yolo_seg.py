"""Ultralytics YOLOv8/11-seg: boxes with mask coefficients, plus mask prototypes.

output0 (1, 4+C+M, N): cx, cy, w, h, C class scores, M mask coefficients per anchor;
output1 (1, M, h, w): prototypes covering the model input (h = input / 4 in Ultralytics'
exports). An instance's mask is sigmoid(coefficients . prototypes), cut to its box, resized
onto the frame and thresholded at 0.5, as Ultralytics' `process_mask` does.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.decoders.dense import to_frame
from edge_sdk.decoders.nms import DetectionDecoder
from edge_sdk.decoders.pose import anchor_rows
from edge_sdk.decoders.yolo import _best_class, cxcywh_to_xyxy
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections

PROTO_STRIDE = 4  # Ultralytics' prototypes: a quarter of the input's size


def crop_to_boxes(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Zero each (h, w) mask outside its box (in mask pixels), as Ultralytics' crop_mask."""
    h, w = masks.shape[1:]
    cols, rows = np.arange(w)[None, None, :], np.arange(h)[None, :, None]
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    return masks * inside


@register_decoder("yolov8-seg")
class YoloSeg(DetectionDecoder):
    task = "segment"

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        heads = [np.asarray(o) for o in outputs]
        dets = [o for o in heads if o.ndim == 3 and o.shape[0] == 1]
        protos = [o for o in heads if o.ndim == 4 and o.shape[0] == 1]
        if len(dets) != 1 or len(protos) != 1:
            raise ManifestError("yolov8-seg: expected outputs (1, 4+C+M, N) and (1, M, h, w), "
                                f"got shapes {[list(o.shape) for o in heads]}")
        proto = protos[0][0].astype(np.float32)
        m, mh, mw = proto.shape
        rows = anchor_rows(dets[0][0], None if self.num_classes is None else
                           4 + self.num_classes + m)
        classes = rows.shape[1] - 4 - m
        if classes < 1 or (self.num_classes is not None and classes != self.num_classes):
            raise ManifestError(f"yolov8-seg: output0 {list(dets[0].shape)} does not hold "
                                f"4 box values, {self.num_classes or 'C >= 1'} class scores and "
                                f"the {m} mask coefficients of prototypes {list(protos[0].shape)}")
        xyxy = cxcywh_to_xyxy(rows[:, :4])
        score, class_ids = _best_class(rows[:, 4:4 + classes])
        found = self._finish(xyxy, score, class_ids, transform,
                             data={"coef": rows[:, 4 + classes:], "box_in": xyxy})
        in_hw = (transform.input_h, transform.input_w) if transform.input_w else (
            mh * PROTO_STRIDE, mw * PROTO_STRIDE)
        logits = (found.data["coef"] @ proto.reshape(m, -1)).reshape(-1, mh, mw)
        soft = crop_to_boxes(1.0 / (1.0 + np.exp(-logits)),
                             found.data["box_in"] * np.array([mw / in_hw[1], mh / in_hw[0]] * 2))
        masks = to_frame(soft, transform, nearest=False, input_hw=in_hw) > 0.5
        return Detections(found.xyxy, found.scores, found.class_ids, labels=found.labels,
                          data={"masks": masks})
