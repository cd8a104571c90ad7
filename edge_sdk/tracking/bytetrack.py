"""ByteTrack (Zhang et al., ECCV 2022): associate every detection box, low scores included.

Per frame: predict every track with a Kalman filter; match confident detections to tracks
(including recently lost ones) by IoU; then match the remaining *tracked* tracks to the
low-score detections -- an occluded object often still yields a weak box, which keeps its id;
tentative tracks get one chance at the leftover confident boxes; leftovers start new tentative
tracks. A tentative track receives an id once matched `min_consecutive_frames` frames in a row
(a one-frame false positive never gets one); a lost track keeps its id for `track_buffer` frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_sdk.results import Detections
from edge_sdk.tracking.base import Tracker, TrackerError, register_tracker
from edge_sdk.tracking.kalman import KalmanFilter, cxcyah_to_xyxy, xyxy_to_cxcyah
from edge_sdk.tracking.matching import iou_cost, linear_assignment

# Cost limits (1 - IoU) of the second association and of tentative tracks, from the paper's code.
LOW_SCORE_MATCH_THRESHOLD = 0.5
TENTATIVE_MATCH_THRESHOLD = 0.7


@dataclass
class _Track:
    mean: np.ndarray  # (8,) Kalman state
    cov: np.ndarray  # (8, 8)
    start_frame: int
    last_frame: int  # last frame a detection was matched
    hits: int = 1  # consecutive matched frames while tentative
    track_id: int = -1  # -1 until confirmed
    lost: bool = False

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0


@register_tracker("bytetrack")
class ByteTrack(Tracker):
    def __init__(
        self,
        high_threshold: float = 0.5,
        low_threshold: float = 0.1,
        new_track_threshold: float = 0.6,
        match_threshold: float = 0.8,
        track_buffer: int = 30,
        min_consecutive_frames: int = 2,
        fuse_score: bool = True,
    ) -> None:
        """Thresholds are detection scores, except `match_threshold`: the largest 1 - IoU
        accepted in the first association. `track_buffer`: frames a lost track keeps its id."""
        numbers = {
            "high_threshold": high_threshold,
            "low_threshold": low_threshold,
            "new_track_threshold": new_track_threshold,
            "match_threshold": match_threshold,
        }
        for key, value in numbers.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0.0 <= value <= 1.0)
            ):
                raise TrackerError(f"bytetrack: {key} must be a number in [0, 1], got {value!r}")
        if low_threshold > high_threshold:
            raise TrackerError(
                f"bytetrack: low_threshold ({low_threshold}) must not exceed "
                f"high_threshold ({high_threshold})"
            )
        for key, value, least in (
            ("track_buffer", track_buffer, 0),
            ("min_consecutive_frames", min_consecutive_frames, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TrackerError(f"bytetrack: {key} must be an integer >= {least}, got {value!r}")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.new_track_threshold = float(new_track_threshold)
        self.match_threshold = float(match_threshold)
        self.track_buffer = int(track_buffer)
        self.min_consecutive_frames = int(min_consecutive_frames)
        self.fuse_score = bool(fuse_score)
        self.kalman = KalmanFilter()
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._frame = 0
        self._next_id = 1  # per instance: two trackers (two cameras) never share a counter

    def update(self, detections: Detections) -> Detections:
        self._frame += 1
        self._predict()
        scores = detections.scores
        boxes = detections.xyxy.astype(np.float64)
        high = np.flatnonzero(scores >= self.high_threshold)
        low = np.flatnonzero((scores >= self.low_threshold) & (scores < self.high_threshold))
        assigned: dict[int, _Track] = {}  # detection index -> track

        # 1. Confirmed tracks (tracked or lost) against confident detections.
        pool = [i for i, t in enumerate(self._tracks) if t.confirmed]
        cost = iou_cost(self._predicted[pool], boxes[high],
                        scores[high] if self.fuse_score else None)  # fmt: skip
        matches, left_tracks, left_high = linear_assignment(cost, self.match_threshold)
        for t, d in matches:
            assigned[int(high[d])] = self._tracks[pool[t]]

        # 2. Tracks still visible last frame against low-score detections (occlusion, blur).
        remaining = [pool[t] for t in left_tracks if not self._tracks[pool[t]].lost]
        cost = iou_cost(self._predicted[remaining], boxes[low])
        matches, unmatched, _ = linear_assignment(cost, LOW_SCORE_MATCH_THRESHOLD)
        for t, d in matches:
            assigned[int(low[d])] = self._tracks[remaining[t]]
        for t in unmatched:
            self._tracks[remaining[t]].lost = True

        # 3. Tentative tracks get the confident leftovers; unmatched ones were noise.
        high = high[left_high]
        tentative = [i for i, t in enumerate(self._tracks) if not t.confirmed]
        cost = iou_cost(self._predicted[tentative], boxes[high],
                        scores[high] if self.fuse_score else None)  # fmt: skip
        matches, unmatched, left_high = linear_assignment(cost, TENTATIVE_MATCH_THRESHOLD)
        for t, d in matches:
            assigned[int(high[d])] = self._tracks[tentative[t]]
        dropped = {id(self._tracks[tentative[t]]) for t in unmatched}

        self._correct(assigned, boxes)
        # 4. New tentative tracks from sure, unexplained boxes.
        new = high[left_high]
        new = new[scores[new] >= self.new_track_threshold]
        born = self._start(boxes[new])
        assigned.update(zip(new.tolist(), born, strict=True))

        # 5. Confirm, then forget noise and tracks lost for longer than the buffer.
        for track in assigned.values():
            if not track.confirmed and track.hits >= self.min_consecutive_frames:
                track.track_id = self._next_id
                self._next_id += 1
        self._tracks = [
            t
            for t in self._tracks
            if id(t) not in dropped and self._frame - t.last_frame <= self.track_buffer
        ]
        rows = np.array(sorted(i for i, t in assigned.items() if t.confirmed), np.int64)
        ids = np.array([assigned[i].track_id for i in rows.tolist()], np.int64)
        return detections[rows].with_tracker_ids(ids)

    def _predict(self) -> None:
        """Every track one frame ahead; `_predicted` holds their boxes, row i for track i."""
        means = self.kalman.predict_tracks(self._tracks, [t.lost for t in self._tracks])
        self._predicted = cxcyah_to_xyxy(means) if len(means) else np.zeros((0, 4))

    def _correct(self, assigned: dict[int, _Track], boxes: np.ndarray) -> None:
        """Kalman-update every matched track with its detection; a lost track is found again."""
        if not assigned:
            return
        rows = list(assigned)
        tracks = [assigned[i] for i in rows]
        mean, cov = self.kalman.update(
            np.stack([t.mean for t in tracks]),
            np.stack([t.cov for t in tracks]),
            xyxy_to_cxcyah(boxes[rows]),
        )
        for track, m, c in zip(tracks, mean, cov, strict=True):
            track.mean, track.cov = m, c
            track.hits += 0 if track.confirmed else 1
            track.last_frame = self._frame
            track.lost = False

    def _start(self, boxes: np.ndarray) -> list[_Track]:
        if not len(boxes):
            return []
        mean, cov = self.kalman.initiate(xyxy_to_cxcyah(boxes))
        born = [_Track(m, c, self._frame, self._frame) for m, c in zip(mean, cov, strict=True)]
        self._tracks.extend(born)
        return born
