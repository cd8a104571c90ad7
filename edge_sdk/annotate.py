"""Draw results on a frame: boxes with labels, scores and track ids, zones and counting lines.

Pure OpenCV on a copy of the frame; used by the annotated-video sink and handy on its own:
`cv2.imwrite("out.jpg", annotate(frame, model.predict(frame)))`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from edge_sdk.results import Classification, Detections

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


def colour(key: int) -> tuple[int, int, int]:
    return PALETTE[int(key) % len(PALETTE)]


def annotate(
    image: np.ndarray,
    result: Classification | Detections | None,
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
    if isinstance(result, Detections):
        _boxes(out, result, scale)
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


def _label(out: np.ndarray, text: str, anchor: tuple[int, int], c: tuple, scale: float) -> None:
    """Text on a filled box just above `anchor` (below it at the top edge)."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    x, y = int(anchor[0]), int(anchor[1])
    top = y - h - base - 2 if y - h - base - 2 >= 0 else y
    cv2.rectangle(out, (x, top), (x + w + 4, top + h + base + 2), c, -1)
    text_colour = (0, 0, 0) if sum(c) > 450 else (255, 255, 255)
    cv2.putText(out, text, (x + 2, top + h + 1), FONT, scale, text_colour, 1, cv2.LINE_AA)
