"""Kalman smoothing of the boxes a tracker outputs: steadier annotations and zone tests.

A detector's box around a walking person jitters by a few pixels from frame to frame; a zone
edge or a counting line then sees the anchor point hop back and forth. `SmoothedTracker` runs
any tracker, then replaces each tracked box by its own constant-velocity Kalman filter's
estimate (one filter per track id, the same filter the trackers use), so the output follows
the motion and not the noise. Ids, scores and classes are untouched.

    build_tracker("bytetrack", smooth=True)      # or SmoothedTracker(OcSort())
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_sdk.results import Detections
from edge_sdk.tracking.base import Tracker
from edge_sdk.tracking.kalman import KalmanFilter, cxcyah_to_xyxy, xyxy_to_cxcyah


class SmoothedTracker(Tracker):
    def __init__(self, tracker: Tracker, forget_after: int = 30) -> None:
        """`forget_after`: frames an unseen id's filter is kept (a returning id continues)."""
        self.tracker = tracker
        self.track_buffer = getattr(tracker, "track_buffer", forget_after)
        self.forget_after = forget_after
        self.kalman = KalmanFilter()
        self.reset()

    def reset(self) -> None:
        self.tracker.reset()
        self._filters: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._frame = 0

    def update(self, detections: Detections) -> Detections:
        self._frame += 1
        tracked = self.tracker.update(detections)
        if tracked.tracker_ids is None or not len(tracked.tracker_ids):
            self._forget()
            return tracked
        z = xyxy_to_cxcyah(tracked.xyxy.astype(np.float64))
        ids = tracked.tracker_ids.tolist()
        new = [i for i, k in enumerate(ids) if k not in self._filters]
        # Ids seen last frame (nearly all) in one batch; ids back after a gap one by one.
        steady = [i for i, k in enumerate(ids) if k in self._filters
                  and self._filters[k][2] == self._frame - 1]  # fmt: skip
        mean = np.empty((len(ids), 8))
        if new:
            mean[new], cov = self.kalman.initiate(z[new])
            self._keep(ids, new, mean, cov)
        if steady:
            m, c = self.kalman.predict(np.stack([self._filters[ids[i]][0][0] for i in steady]),
                                       np.stack([self._filters[ids[i]][1][0] for i in steady]))
            mean[steady], cov = self.kalman.update(m, c, z[steady])
            self._keep(ids, steady, mean, cov)
        for i in set(range(len(ids))) - set(new) - set(steady):
            m, c, seen = self._filters[ids[i]]
            for _ in range(self._frame - seen):  # unseen frames: predict through them
                m, c = self.kalman.predict(m, c)
            m, c = self.kalman.update(m, c, z[i : i + 1])
            mean[i] = m[0]
            self._filters[ids[i]] = (m, c, self._frame)
        self._forget()
        return replace(tracked, xyxy=cxcyah_to_xyxy(mean).astype(tracked.xyxy.dtype))

    def _keep(self, ids: list[int], rows: list[int], mean: np.ndarray, cov: np.ndarray) -> None:
        for j, i in enumerate(rows):
            self._filters[ids[i]] = (mean[i : i + 1], cov[j : j + 1], self._frame)

    def _forget(self) -> None:
        old = [k for k, (_, _, seen) in self._filters.items()
               if self._frame - seen > self.forget_after]  # fmt: skip
        for k in old:
            del self._filters[k]
