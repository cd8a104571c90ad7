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
        boxes = tracked.xyxy.astype(np.float64)
        out = boxes.copy()
        for i, track_id in enumerate(tracked.tracker_ids.tolist()):
            z = xyxy_to_cxcyah(boxes[i : i + 1])
            if track_id not in self._filters:
                mean, cov = self.kalman.initiate(z)
            else:
                mean, cov, seen = self._filters[track_id]
                for _ in range(self._frame - seen):  # unseen frames: predict through them
                    mean, cov = self.kalman.predict(mean, cov)
                mean, cov = self.kalman.update(mean, cov, z)
            self._filters[track_id] = (mean, cov, self._frame)
            out[i] = cxcyah_to_xyxy(mean)[0]
        self._forget()
        return replace(tracked, xyxy=out.astype(tracked.xyxy.dtype))

    def _forget(self) -> None:
        old = [k for k, (_, _, seen) in self._filters.items()
               if self._frame - seen > self.forget_after]  # fmt: skip
        for k in old:
            del self._filters[k]
