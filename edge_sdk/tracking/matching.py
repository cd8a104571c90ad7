"""IoU costs and optimal track-detection assignment (SciPy's Hungarian solver)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) intersection over union."""
    if not len(a) or not len(b):  # trackers ask often; skip the dozen numpy calls
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.maximum(bottom_right - top_left, 0).prod(axis=2)
    area_a = np.maximum(a[:, 2:] - a[:, :2], 0).prod(axis=1)
    area_b = np.maximum(b[:, 2:] - b[:, :2], 0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def iou_cost(
    track_xyxy: np.ndarray, det_xyxy: np.ndarray, det_scores: np.ndarray | None = None
) -> np.ndarray:
    """1 - IoU; with scores, 1 - IoU * score (ByteTrack's `fuse_score`: trust sure boxes more)."""
    iou = box_iou(track_xyxy, det_xyxy)
    if det_scores is not None:
        iou = iou * det_scores[None, :]
    return 1.0 - iou


def linear_assignment(
    cost: np.ndarray, max_cost: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost matching where no pair costs more than `max_cost`.

    Same answer as ByteTrack's `lap.lapjv(cost, extend_cost=True, cost_limit=max_cost)`: each
    row and column may instead take a dummy partner at max_cost / 2, so a real pair is only used
    when it beats leaving both unmatched. (Solving first and dropping costly pairs afterwards
    can lose matches the solver traded away for a costly one.)
    Returns (K, 2) matched (row, col) pairs, unmatched rows, unmatched cols.
    """
    n, m = cost.shape
    if n == 0 or m == 0 or not (cost <= max_cost).any():  # nothing could be matched
        return np.zeros((0, 2), np.int64), np.arange(n), np.arange(m)
    extended = np.full((n + m, m + n), max_cost / 2.0)
    extended[:n, :m] = cost
    extended[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(extended)
    real = (rows < n) & (cols < m)
    real &= extended[rows, cols] <= max_cost
    matches = np.stack([rows[real], cols[real]], axis=1).astype(np.int64)
    # Masks, not np.setdiff1d: its sorting costs more than the solver at tracking sizes.
    free_rows, free_cols = np.ones(n, bool), np.ones(m, bool)
    free_rows[matches[:, 0]] = False
    free_cols[matches[:, 1]] = False
    return matches, np.flatnonzero(free_rows), np.flatnonzero(free_cols)
