"""OC-SORT (Cao et al., CVPR 2023): SORT made robust to occlusion and non-linear motion by
trusting observations over the Kalman filter's guesses.

Per frame: predict every track; match confident detections by IoU plus a direction term
(observation-centric momentum, OCM: a detection that continues the track's recent direction of
travel is preferred); tracks still unmatched get a second chance against their *last
observed* box (observation-centric recovery, OCR: an object that stopped or turned while the
filter drifted on); a track found again after a gap has its filter re-run over the gap on
boxes interpolated between the two observations (observation-centric re-update, ORU), so the
error accumulated while lost does not carry on. No appearance features. A track gets an id
after `min_hits` matched frames and keeps it while unseen for up to `max_age` frames.

The Kalman filter is the one ByteTrack uses here (centre, aspect, height); OC-SORT's paper
uses SORT's (centre, area, aspect): same idea, one filter to maintain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_sdk.results import Detections
from edge_sdk.tracking.base import Tracker, TrackerError, register_tracker
from edge_sdk.tracking.kalman import KalmanFilter, cxcyah_to_xyxy, xyxy_to_cxcyah
from edge_sdk.tracking.matching import box_iou, linear_assignment


@dataclass
class _Track:
    mean: np.ndarray
    cov: np.ndarray
    last_box: np.ndarray  # (4,) last observed xyxy
    last_frame: int
    observed: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> box, recent
    saved: tuple[np.ndarray, np.ndarray] | None = None  # filter state at the last observation
    hits: int = 1
    track_id: int = -1
    # The direction term's inputs, refreshed once per observation (not per frame and pair):
    travel: np.ndarray | None = None  # unit vector of travel; None while it is not known
    anchor: np.ndarray | None = None  # centre of the observation it is measured from

    def refresh_motion(self, delta_t: int) -> None:
        """Direction of travel: from the observation ~delta_t frames back to the last one;
        the anchor for detections is the observation delta_t - 1 frames back."""
        past = [f for f in self.observed if f < self.last_frame]
        self.travel = self.anchor = None
        if not past:
            return
        earlier = max((f for f in past if f <= self.last_frame - delta_t), default=min(past))
        travel = _unit(_centre(self.last_box) - _centre(self.observed[earlier]))
        if not travel.any():
            return
        back = [f for f in self.observed if f <= self.last_frame - delta_t + 1]
        self.travel = travel
        self.anchor = _centre(self.observed[max(back)] if back else self.last_box)


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    return v / n if n > 1e-6 else np.zeros(2)


@register_tracker("ocsort")
class OcSort(Tracker):
    def __init__(
        self,
        det_threshold: float = 0.5,
        iou_threshold: float = 0.3,
        max_age: int = 30,
        min_hits: int = 2,
        delta_t: int = 3,
        inertia: float = 0.2,
    ) -> None:
        """`det_threshold`: lowest score tracked; `iou_threshold`: lowest IoU (plus direction
        bonus) a match may have; `max_age`: frames a lost track keeps its id; `min_hits`:
        matched frames before an id; `delta_t`: frames back for the direction of travel;
        `inertia`: weight of the direction term (the paper's 0.2)."""
        for key, value in (("det_threshold", det_threshold), ("iou_threshold", iou_threshold),
                           ("inertia", inertia)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0.0 <= value <= 1.0):
                raise TrackerError(f"ocsort: {key} must be a number in [0, 1], got {value!r}")
        for key, value, least in (("max_age", max_age, 0), ("min_hits", min_hits, 1),
                                  ("delta_t", delta_t, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TrackerError(f"ocsort: {key} must be an integer >= {least}, got {value!r}")
        self.det_threshold = float(det_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_age = self.track_buffer = int(max_age)
        self.min_hits = int(min_hits)
        self.delta_t = int(delta_t)
        self.inertia = float(inertia)
        self.kalman = KalmanFilter()
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._frame = 0
        self._next_id = 1

    def update(self, detections: Detections) -> Detections:
        self._frame += 1
        self._predict()
        keep = np.flatnonzero(detections.scores >= self.det_threshold)
        boxes = detections.xyxy[keep].astype(np.float64)
        scores = detections.scores[keep].astype(np.float64)
        tracks = self._tracks
        assigned: dict[int, _Track] = {}

        # 1. Predicted boxes vs detections: IoU + direction consistency (OCM).
        cost = self._first_cost(tracks, boxes, scores)
        matches, left_t, left_d = linear_assignment(cost, 1.0 - self.iou_threshold)
        for t, d in matches:
            assigned[int(d)] = tracks[t]

        # 2. Still unmatched: last observed box vs remaining detections (OCR).
        rest = [tracks[t] for t in left_t]
        if rest and len(left_d):
            last = np.stack([t.last_box for t in rest])
            iou = box_iou(last, boxes[left_d])
            matches, _, unmatched = linear_assignment(1.0 - iou, 1.0 - self.iou_threshold)
            for t, d in matches:
                assigned[int(left_d[d])] = rest[t]
            left_d = left_d[unmatched]

        self._observe(assigned, boxes)
        for d in left_d.tolist():
            self._start(boxes[d])

        for track in assigned.values():
            if track.track_id < 0 and track.hits >= self.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
        self._tracks = [t for t in self._tracks if self._frame - t.last_frame <= self.max_age]
        rows = np.array(sorted(d for d, t in assigned.items() if t.track_id >= 0), np.int64)
        ids = np.array([assigned[d].track_id for d in rows.tolist()], np.int64)
        return detections[keep[rows]].with_tracker_ids(ids)

    def _first_cost(self, tracks: list[_Track], boxes: np.ndarray,
                    scores: np.ndarray) -> np.ndarray:  # fmt: skip
        if not tracks or not len(boxes):
            return np.zeros((len(tracks), len(boxes)))
        predicted = cxcyah_to_xyxy(np.stack([t.mean for t in tracks]))
        iou = box_iou(predicted, boxes)
        # Direction term: the angle between the track's direction of travel and the direction
        # from its observation delta_t frames back to each detection; aligned is best.
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        bonus = np.zeros_like(iou)
        for i, t in enumerate(tracks):
            if t.travel is None:
                continue
            to_det = centres - t.anchor
            norms = np.maximum(np.hypot(to_det[:, 0], to_det[:, 1]), 1e-6)
            cos = np.clip((to_det @ t.travel) / norms, -1.0, 1.0)
            angle = np.arccos(cos)
            bonus[i] = (np.pi / 2 - angle) / np.pi * self.inertia * scores
        return 1.0 - (iou + np.where(iou > 0, bonus, 0.0))

    def _predict(self) -> None:
        self.kalman.predict_tracks(self._tracks)

    def _observe(self, assigned: dict[int, _Track], boxes: np.ndarray) -> None:
        """Correct each matched track with its detection (row of `boxes`): tracks seen last
        frame in one batched update, tracks found again after a gap by re-update (ORU)."""
        found_again = {d for d, t in assigned.items()
                       if self._frame - t.last_frame > 1 and t.saved is not None}  # fmt: skip
        seen = [d for d in assigned if d not in found_again]
        if seen:
            tracks = [assigned[d] for d in seen]
            mean, cov = self.kalman.update(np.stack([t.mean for t in tracks]),
                                           np.stack([t.cov for t in tracks]),
                                           xyxy_to_cxcyah(boxes[seen]))  # fmt: skip
            for track, m, c in zip(tracks, mean, cov, strict=True):
                track.mean, track.cov = m, c
        for d in found_again:
            self._re_update(assigned[d], boxes[d])
        for d, track in assigned.items():
            box = boxes[d]
            track.saved = (track.mean.copy(), track.cov.copy())
            track.last_box = box.copy()
            track.last_frame = self._frame
            track.observed[self._frame] = box.copy()
            for f in [f for f in track.observed if f < self._frame - 2 * self.delta_t]:
                del track.observed[f]
            track.hits += 1
            track.refresh_motion(self.delta_t)

    def _re_update(self, track: _Track, box: np.ndarray) -> None:
        """ORU: back to the last observation, then re-run the gap on interpolated boxes."""
        gap = self._frame - track.last_frame
        mean, cov = track.saved
        mean, cov = mean[None], cov[None]
        for step in range(1, gap + 1):
            virtual = track.last_box + (box - track.last_box) * step / gap
            mean, cov = self.kalman.predict(mean, cov)
            mean, cov = self.kalman.update(mean, cov, xyxy_to_cxcyah(virtual[None]))
        track.mean, track.cov = mean[0], cov[0]

    def _start(self, box: np.ndarray) -> None:
        mean, cov = self.kalman.initiate(xyxy_to_cxcyah(box[None]))
        track = _Track(mean[0], cov[0], box.copy(), self._frame, {self._frame: box.copy()})
        track.saved = (track.mean.copy(), track.cov.copy())
        self._tracks.append(track)
