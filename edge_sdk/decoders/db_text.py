"""Text boxes from a DB text detector's probability map (PP-OCR det, DBNet): [1, 1, H, W].

The post-processing PaddleOCR and RapidOCR run: pixels over `threshold` form regions; each
region's minimum-area rectangle is kept when it is at least `min_size` pixels across and the
map's mean probability inside it reaches `conf_threshold` (their box_thresh), the
`max_detections` best scored (they keep the first max_candidates found); DB predicts a shrunk
text kernel, so the rectangle is grown back by `unclip_ratio` x area / perimeter on every
side (what pyclipper's offset of a rectangle gives, less the rounded corners). Boxes are the
rotated rectangles' axis-aligned extents in frame pixels; the rectangles themselves (4 corners,
frame pixels) are in `Detections.data["quad"]`. One class, "text".
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections


@register_decoder("db-text")
class DbText:
    task = "detect"

    def __init__(self, labels: tuple[str, ...] = (), *, threshold: float = 0.3,
                 conf_threshold: float = 0.6, unclip_ratio: float = 1.5, min_size: int = 3,
                 max_detections: int = 1000) -> None:
        for name, value, low, high in (("threshold", threshold, 0.0, 1.0),
                                       ("conf_threshold", conf_threshold, 0.0, 1.0),
                                       ("unclip_ratio", unclip_ratio, 0.0, 10.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low <= value <= high:
                raise ManifestError(f"db-text: {name} must be a number in [{low}, {high}], "
                                    f"got {value!r}")
        for name, value in (("min_size", min_size), ("max_detections", max_detections)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(f"db-text: {name} must be a whole number >= 1, "
                                    f"got {value!r}")
        self.labels = tuple(labels) or ("text",)
        self.threshold = float(threshold)
        self.conf_threshold = float(conf_threshold)
        self.unclip_ratio = float(unclip_ratio)
        self.min_size = min_size
        self.max_detections = max_detections

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        prob = self.probability_map(outputs)
        h, w = prob.shape
        contours, _ = cv2.findContours((prob > self.threshold).astype(np.uint8),
                                       cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        quads, scores = [], []
        for contour in contours:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
            if min(rw, rh) < self.min_size:
                continue
            score = self._mean_inside(prob, cv2.boxPoints(((cx, cy), (rw, rh), angle)))
            if score < self.conf_threshold:
                continue
            grow = rw * rh * self.unclip_ratio / (2.0 * (rw + rh))  # area x ratio / perimeter
            if min(rw, rh) + 2 * grow < self.min_size + 2:
                continue
            quads.append(cv2.boxPoints(((cx, cy), (rw + 2 * grow, rh + 2 * grow), angle)))
            scores.append(score)
        # the best scored, best first: the first found (contour order) drops lines at random
        best = np.argsort(-np.asarray(scores, np.float32), kind="stable")[: self.max_detections]
        quads, scores = [quads[i] for i in best], [scores[i] for i in best]
        # map pixels -> input pixels (a map may be smaller than the input) -> frame pixels
        cell_x = transform.input_w / w if transform.input_w else 1.0
        cell_y = transform.input_h / h if transform.input_h else 1.0
        corners = np.asarray(quads, np.float32).reshape(-1, 2) * (cell_x, cell_y)
        pairs = transform.to_frame(np.tile(corners, (1, 2))) if len(corners) else \
            np.zeros((0, 4), np.float32)
        quad = pairs[:, :2].reshape(-1, 4, 2)
        xyxy = np.concatenate([quad.min(axis=1), quad.max(axis=1)], axis=1) if len(quad) else \
            np.zeros((0, 4), np.float32)
        n = len(xyxy)
        return Detections(xyxy=xyxy.astype(np.float32), scores=np.asarray(scores, np.float32),
                          class_ids=np.zeros(n, np.int64),
                          labels=(self.labels[0],) * n, data={"quad": quad.astype(np.float32)})

    @staticmethod
    def probability_map(outputs: list[np.ndarray]) -> np.ndarray:
        """The (H, W) map of one image: DB models write [1, 1, H, W] (or [1, H, W, 1])."""
        out = np.asarray(outputs[0]) if len(outputs) == 1 else None
        if out is not None and out.ndim == 4 and out.shape[0] == 1 and 1 in out.shape[1::2]:
            return (out[0, 0] if out.shape[1] == 1 else out[0, :, :, 0]).astype(np.float32)
        shapes = ", ".join(str(list(np.shape(o))) for o in outputs)
        raise ManifestError(f"db-text: expected one probability map [1, 1, H, W], the model "
                            f"gives {shapes}; a DB text detector (PP-OCR det) has one")

    @staticmethod
    def _mean_inside(prob: np.ndarray, corners: np.ndarray) -> float:
        """Mean probability inside the rectangle, over its bounding window (as DB's fast
        box score does)."""
        h, w = prob.shape
        x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, (w - 1, h - 1))
        x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, (w - 1, h - 1))
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        cv2.fillPoly(mask, [np.round(corners - (x0, y0)).astype(np.int32)], 1)
        return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])
