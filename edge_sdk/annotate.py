"""Draw results on a frame: boxes with labels, scores and track ids, keypoints and masks,
semantic maps, zones and counting lines.

Pure OpenCV on a copy of the frame; used by the annotated-video sink and handy on its own:
`cv2.imwrite("out.jpg", annotate(frame, model.predict(frame)))`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from edge_sdk.results import Classification, Detections, Segmentation

# 20 well-separated BGR colours; a track keeps its colour for its whole life.
PALETTE = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)  # fmt: skip
ZONE_COLOUR = (0, 200, 255)
LINE_COLOUR = (255, 0, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# COCO's 17-keypoint skeleton (0-based pairs), drawn when a pose model has that layout.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
KEYPOINT_SEEN = 0.5  # visibility above which a keypoint is drawn
MASK_ALPHA = 0.4


def colour(key: int) -> tuple[int, int, int]:
    return PALETTE[int(key) % len(PALETTE)]


def annotate(
    image: np.ndarray,
    result: Classification | Detections | Segmentation | None,
    *,
    zones: Sequence[tuple[str, np.ndarray]] = (),
    lines: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    zone_counts: Mapping[str, int] | None = None,
    line_counts: Mapping[str, tuple[int, int]] | None = None,
) -> np.ndarray:
    """A copy of `image` with the result drawn; zones are (name, (M, 2) polygon), lines are
    (name, start, end); counts, if given, are shown next to them (lines: (in, out))."""
    out = image.copy()
    scale = max(0.4, min(out.shape[:2]) / 1000)
    for name, polygon in zones:
        pts = np.round(polygon).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, ZONE_COLOUR, 2, cv2.LINE_AA)
        count = "" if zone_counts is None else f": {zone_counts.get(name, 0)}"
        _label(out, f"{name}{count}", tuple(pts[0, 0]), ZONE_COLOUR, scale)
    for name, start, end in lines:
        a, b = tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int))
        cv2.line(out, a, b, LINE_COLOUR, 2, cv2.LINE_AA)
        text = name
        if line_counts is not None:
            n_in, n_out = line_counts.get(name, (0, 0))
            text = f"{name}: in {n_in} out {n_out}"
        _label(out, text, a, LINE_COLOUR, scale)
    if isinstance(result, Segmentation):
        _class_map(out, result.class_map)
    if isinstance(result, Detections):
        if result.masks is not None:
            for i, mask in enumerate(result.masks):
                _tint(out, mask, colour(int(result.class_ids[i]) + i))
        _boxes(out, result, scale)
        if result.keypoints is not None:
            _keypoints(out, result.keypoints, scale)
    elif isinstance(result, Classification):
        for i, (label, score) in enumerate(zip(result.labels, result.scores)):
            y = int(30 * scale * 2 * (i + 1))
            _label(out, f"{label} {float(score):.2f}", (8, y), colour(i), scale * 1.5)
            if i == 2:
                break
    return out


def _boxes(out: np.ndarray, dets: Detections, scale: float) -> None:
    ids = dets.tracker_ids
    for i in range(len(dets)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.xyxy[i])
        tracked = ids is not None and ids[i] >= 0
        key = int(ids[i]) if tracked else int(dets.class_ids[i])
        c = colour(key)
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 2)
        name = dets.labels[i] if dets.labels is not None else str(int(dets.class_ids[i]))
        text = f"#{key} {name}" if tracked else f"{name} {float(dets.scores[i]):.2f}"
        _label(out, text, (x1, y1), c, scale)


def _tint(out: np.ndarray, mask: np.ndarray, c: tuple[int, int, int]) -> None:
    if mask.shape == out.shape[:2] and mask.any():
        out[mask] = (out[mask] * (1 - MASK_ALPHA) + np.array(c) * MASK_ALPHA).astype(out.dtype)


def _class_map(out: np.ndarray, class_map: np.ndarray) -> None:
    """Every class but 0 (background, by convention) tinted in its colour."""
    for c in np.unique(class_map):
        if c != 0:
            _tint(out, class_map == c, colour(int(c)))


def _keypoints(out: np.ndarray, keypoints: np.ndarray, scale: float) -> None:
    radius = max(2, int(round(3 * scale)))
    for person in keypoints:
        seen = person[:, 2] > KEYPOINT_SEEN
        pts = np.round(person[:, :2]).astype(int)
        if len(person) == 17:
            for a, b in COCO_SKELETON:
                if seen[a] and seen[b]:
                    cv2.line(out, tuple(pts[a]), tuple(pts[b]), (255, 200, 0), 2, cv2.LINE_AA)
        for k in np.flatnonzero(seen):
            cv2.circle(out, tuple(pts[k]), radius, colour(int(k)), -1, cv2.LINE_AA)


def _label(out: np.ndarray, text: str, anchor: tuple[int, int], c: tuple, scale: float) -> None:
    """Text on a filled box just above `anchor` (below it at the top edge)."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    x, y = int(anchor[0]), int(anchor[1])
    top = y - h - base - 2 if y - h - base - 2 >= 0 else y
    cv2.rectangle(out, (x, top), (x + w + 4, top + h + base + 2), c, -1)
    text_colour = (0, 0, 0) if sum(c) > 450 else (255, 255, 255)
    cv2.putText(out, text, (x + 2, top + h + 1), FONT, scale, text_colour, 1, cv2.LINE_AA)
