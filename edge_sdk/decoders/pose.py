"""Ultralytics YOLOv8/11-pose: (1, 4+C+K*D, N) = cx, cy, w, h, C class scores, K keypoints.

Each keypoint is (x, y) in input pixels, plus a visibility already through a sigmoid (D = 3)
as Ultralytics exports it. Boxes go through the shared threshold/NMS path with their keypoints
in tow; keypoints come out in frame pixels as `Detections.keypoints` (N, K, 3).
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.decoders.nms import DetectionDecoder, single_image
from edge_sdk.decoders.yolo import _best_class, cxcywh_to_xyxy
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections


def keypoints_to_frame(kpts: np.ndarray, transform: FrameTransform) -> np.ndarray:
    """(N, K, 2 or 3) input-pixel keypoints to frame pixels (visibility, if any, kept)."""
    out = np.array(kpts, np.float32, copy=True)
    xy = out[..., :2].reshape(-1, 2)
    framed = transform.to_frame(np.concatenate([xy, xy], axis=1))
    out[..., :2] = framed[:, :2].reshape(out.shape[:-1] + (2,))
    return out


def anchor_rows(out: np.ndarray, channels: int | None) -> np.ndarray:
    """(N, channels) float32 from a (channels, N) or (N, channels) head; without a known
    channel count the shorter axis is the channels' (anchors are thousands in real models)."""
    a, b = out.shape
    first = a == channels if channels is not None and channels in (a, b) else a <= b
    return (out.T if first else out).astype(np.float32)


@register_decoder("yolov8-pose")
class YoloPose(DetectionDecoder):
    """`kpt_shape` is Ultralytics' [K, D] (D = 2: x, y; D = 3: x, y, visibility)."""

    task = "pose"

    def __init__(self, labels: tuple[str, ...] = (), kpt_shape: list[int] | None = None,
                 **kwargs) -> None:
        super().__init__(labels, **kwargs)
        kpt_shape = [17, 3] if kpt_shape is None else kpt_shape
        if not (isinstance(kpt_shape, (list, tuple)) and len(kpt_shape) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in kpt_shape)
                and kpt_shape[0] >= 1 and kpt_shape[1] in (2, 3)):
            raise ManifestError(f"yolov8-pose: kpt_shape must be [K, 2] or [K, 3] with K >= 1, "
                                f"got {kpt_shape!r}")
        self.kpt_shape = (int(kpt_shape[0]), int(kpt_shape[1]))

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        k, d = self.kpt_shape
        layout = f"(1, 4+C+{k * d}, N)"
        out = single_image(outputs[0], 3, "yolov8-pose", layout)
        shape = list(np.shape(outputs[0]))
        rows = anchor_rows(out, None if self.num_classes is None else
                           4 + self.num_classes + k * d)
        classes = rows.shape[1] - 4 - k * d
        if classes < 1 or (self.num_classes is not None and classes != self.num_classes):
            want = "C >= 1" if self.num_classes is None else f"C = {self.num_classes}"
            raise ManifestError(f"yolov8-pose: expected an output of shape {layout} with "
                                f"{want} for kpt_shape [{k}, {d}], got {shape}")
        score, class_ids = _best_class(rows[:, 4:4 + classes])
        kpts = rows[:, 4 + classes:].reshape(-1, k, d)
        dets = self._finish(cxcywh_to_xyxy(rows[:, :4]), score, class_ids, transform,
                            data={"keypoints": kpts})
        framed = keypoints_to_frame(dets.data["keypoints"], transform)
        if d == 2:  # no visibility channel: every keypoint counts as seen
            framed = np.concatenate([framed, np.ones(framed.shape[:2] + (1,), np.float32)], 2)
        return Detections(dets.xyxy, dets.scores, dets.class_ids, labels=dets.labels,
                          data={"keypoints": framed})
