"""OC-SORT and Kalman box smoothing on scenes whose truth is known: ids through an occlusion,
a crossing, a one-frame false positive, and jitter that smoothing must take out."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.results import Detections
from edge_sdk.tracking import OcSort, SmoothedTracker, TrackerError, build_tracker


def dets(boxes, scores=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return Detections(boxes, np.full(n, 0.9, np.float32) if scores is None
                      else np.asarray(scores, np.float32), np.zeros(n, np.int64))  # fmt: skip


def walker(t, x0=0.0, y=100.0, vx=10.0):
    x = x0 + vx * t
    return [x, y, x + 40, y + 100]


def ids_of(tracked):
    return tracked.tracker_ids.tolist()


def test_ids_come_after_min_hits_and_a_one_frame_false_positive_gets_none():
    tracker = build_tracker("ocsort")
    assert isinstance(tracker, OcSort)
    assert ids_of(tracker.update(dets([walker(0)]))) == []
    assert ids_of(tracker.update(dets([walker(1), [500, 500, 540, 600]]))) == [1]
    for t in range(2, 6):
        assert ids_of(tracker.update(dets([walker(t)]))) == [1]


def test_an_object_hidden_for_frames_keeps_its_id_after_a_turn():
    """Hidden for 8 frames while it turned (moving right, then down): the filter's guess is
    far off, the last observation is not: recovery (OCR) keeps the id."""
    tracker = OcSort(max_age=30)
    for t in range(10):
        out = tracker.update(dets([walker(t)]))
    assert ids_of(out) == [1]
    for _ in range(8):
        tracker.update(dets([]))
    back = tracker.update(dets([[95, 130, 135, 230]]))  # near where it was last seen, lower
    assert ids_of(back) == [1]
    assert ids_of(tracker.update(dets([[95, 140, 135, 240]]))) == [1]


def test_two_crossing_people_keep_their_ids():
    tracker = OcSort()
    seen = {}
    for t in range(30):
        a = walker(t, x0=0, vx=12)
        b = walker(t, x0=360, vx=-12, y=110)
        out = tracker.update(dets([a, b]))
        if abs(a[0] - b[0]) < 30:
            continue  # boxes on top of each other: which is which is not defined here
        for box, track_id in zip(out.xyxy, out.tracker_ids):
            who = "a" if abs(box[0] - a[0]) < abs(box[0] - b[0]) else "b"
            seen.setdefault(who, set()).add(int(track_id))
    assert seen == {"a": {1}, "b": {2}} or seen == {"a": {2}, "b": {1}}


def test_direction_of_travel_breaks_a_tie_between_two_candidates():
    """After the crossing point, two equally overlapping boxes: the one that continues the
    track's direction of travel wins (OCM)."""
    tracker = OcSort(inertia=0.2)
    for t in range(6):
        out = tracker.update(dets([walker(t)]))
    ahead = walker(6)
    behind = [ahead[0] - 20, ahead[1], ahead[2] - 20, ahead[3]]
    out = tracker.update(dets([behind, ahead]))
    assert ids_of(out) == [1] and out.xyxy[0][0] == pytest.approx(ahead[0])


def test_low_scores_are_not_tracked_and_bad_parameters_are_refused():
    tracker = OcSort(det_threshold=0.5)
    for t in range(3):
        out = tracker.update(dets([walker(t)], scores=[0.3]))
    assert len(out) == 0
    for bad in ({"iou_threshold": 2}, {"max_age": -1}, {"min_hits": 0}, {"inertia": "x"}):
        with pytest.raises(TrackerError):
            OcSort(**bad)
    with pytest.raises(TrackerError, match="bad parameters"):
        build_tracker("ocsort", nonsense=1)


@pytest.mark.parametrize("name", ["bytetrack", "ocsort"])
def test_smoothing_takes_out_jitter_and_keeps_ids(name):
    rng = np.random.default_rng(0)
    raw, smooth = build_tracker(name), build_tracker(name, smooth=True)
    assert isinstance(smooth, SmoothedTracker)
    err_raw, err_smooth = [], []
    for t in range(60):
        truth = np.array(walker(t, vx=4))
        noisy = truth + rng.normal(0, 4, 4)
        a, b = raw.update(dets([noisy])), smooth.update(dets([noisy]))
        assert ids_of(a) == ids_of(b)
        if t >= 10 and len(b):
            err_raw.append(np.abs(a.xyxy[0] - truth).mean())
            err_smooth.append(np.abs(b.xyxy[0] - truth).mean())
    assert len(err_smooth) == 50
    assert np.mean(err_smooth) < 0.8 * np.mean(err_raw)
