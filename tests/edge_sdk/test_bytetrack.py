"""ByteTrack on scripted box sequences: ids survive occlusion, crossing and weak detections.

Each scripted object carries its name in `Detections.data["obj"]`, so a test can check which
id the tracker gave to which real object, frame by frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.results import Detections
from edge_sdk.tracking import ByteTrack, TrackerError, build_tracker, tracker_names


def box(cx: float, cy: float, w: float = 40, h: float = 80) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def frame(*objects: tuple[int, list[float], float]) -> Detections:
    """Detections of one frame from (object number, xyxy, score)."""
    if not objects:
        return Detections.empty()  # no "obj" data: run() reads it with a default
    names, boxes, scores = zip(*objects, strict=True)
    return Detections(
        xyxy=np.array(boxes, np.float32),
        scores=np.array(scores, np.float32),
        class_ids=np.zeros(len(objects), np.int64),
        data={"obj": np.array(names)},
    )


def run(tracker, frames: list[Detections]) -> list[dict[int, int]]:
    """Per frame: {object number: tracker id} for the objects the tracker reported."""
    out = []
    for dets in frames:
        tracked = tracker.update(dets)
        assert tracked.tracker_ids is not None and (tracked.tracker_ids > 0).all()
        objs = tracked.data.get("obj", np.zeros(0, np.int64)).tolist()
        out.append(dict(zip(objs, tracked.tracker_ids.tolist(), strict=True)))
    return out


def ids_of(history: list[dict[int, int]], obj: int) -> set[int]:
    return {ids[obj] for ids in history if obj in ids}


def walker(n: int, hidden: range = range(0), score=0.9, start=100.0, speed=8.0, cy=200.0, obj=0):
    """One object moving right at constant speed; absent in the `hidden` frames."""
    return [[] if f in hidden else [(obj, box(start + speed * f, cy), score)] for f in range(n)]


def test_registry():
    assert "bytetrack" in tracker_names()
    assert isinstance(build_tracker("bytetrack", track_buffer=10), ByteTrack)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("sort", {}, "unknown tracker 'sort'"),
        ("bytetrack", {"buffer": 3}, "bad parameters"),
        ("bytetrack", {"high_threshold": 2}, "high_threshold"),
        ("bytetrack", {"low_threshold": 0.6, "high_threshold": 0.5}, "low_threshold"),
        ("bytetrack", {"track_buffer": -1}, "track_buffer"),
        ("bytetrack", {"min_consecutive_frames": 0}, "min_consecutive_frames"),
    ],
)
def test_bad_tracker_config(name, params, match):
    with pytest.raises(TrackerError, match=match):
        build_tracker(name, **params)


@pytest.mark.parametrize(("min_frames", "first_frame_with_id"), [(1, 0), (2, 1), (3, 2)])
def test_an_id_is_given_after_min_consecutive_frames(min_frames, first_frame_with_id):
    script = walker(6)
    history = run(ByteTrack(min_consecutive_frames=min_frames), [frame(*f) for f in script])
    assert [0 in ids for ids in history] == [f >= first_frame_with_id for f in range(6)]
    assert ids_of(history, 0) == {1}


def test_id_survives_full_occlusion():
    # Visible frames 0-9, gone 10-14, back at the position its velocity predicts.
    script = walker(30, hidden=range(10, 15))
    history = run(ByteTrack(), [frame(*f) for f in script])
    assert ids_of(history, 0) == {1}
    assert all(0 in history[f] for f in range(15, 30))
    assert not any(history[f] for f in range(10, 15))


def test_weak_boxes_during_partial_occlusion_keep_the_track():
    # Scores drop to 0.3 (below high_threshold 0.5) for frames 10-14: the second association
    # keeps matching them, so they are reported with the same id.
    script = [[(o, b, 0.3 if 10 <= f < 15 else s) for o, b, s in objs]
              for f, objs in enumerate(walker(20))]  # fmt: skip
    history = run(ByteTrack(), [frame(*f) for f in script])
    assert all(history[f] == {0: 1} for f in range(1, 20))


def test_weak_boxes_alone_never_start_a_track():
    history = run(ByteTrack(), [frame(*f) for f in walker(10, score=0.4)])
    assert not any(history)


def test_two_crossing_objects_keep_their_ids():
    # 0 walks right, 1 walks left 15 px lower; they overlap most around frame 15, where 1 is
    # hidden behind 0 for frames 13-17.
    script = [
        a + b
        for a, b in zip(
            walker(30, start=100, speed=10, obj=0),
            walker(30, hidden=range(13, 18), start=400, speed=-10, cy=215, obj=1),
            strict=True,
        )
    ]
    history = run(ByteTrack(), [frame(*f) for f in script])
    assert ids_of(history, 0) == {1} and ids_of(history, 1) == {2}
    assert history[-1] == {0: 1, 1: 2}


def test_one_frame_false_positive_never_gets_an_id():
    script = walker(10)
    script[0] = [*script[0], (9, box(500, 400), 0.9)]  # spurious box in frame 0 only
    history = run(ByteTrack(), [frame(*f) for f in script])
    assert ids_of(history, 9) == set()
    assert ids_of(history, 0) == {1}  # no id was spent on the false positive


@pytest.mark.parametrize(("gap", "same_id"), [(3, True), (4, False)])
def test_track_buffer_limits_how_long_an_id_waits(gap, same_id):
    script = walker(25, hidden=range(10, 10 + gap))
    history = run(ByteTrack(track_buffer=3), [frame(*f) for f in script])
    assert ids_of(history, 0) == ({1} if same_id else {1, 2})


def test_ids_are_per_tracker_instance_and_reset_restarts_them():
    script = [frame(*f) for f in walker(5)]
    first, second = ByteTrack(), ByteTrack()
    assert ids_of(run(first, script), 0) == {1}
    assert ids_of(run(second, script), 0) == {1}
    first.reset()
    assert ids_of(run(first, script), 0) == {1}


def test_empty_frames_and_returned_detections():
    tracker = ByteTrack(min_consecutive_frames=1)
    empty = tracker.update(Detections.empty())
    assert len(empty) == 0 and empty.tracker_ids.shape == (0,)
    dets = frame((0, box(100, 100), 0.9), (1, box(300, 100), 0.05))
    tracked = tracker.update(dets)
    # Detector boxes are returned as they came (not Kalman-smoothed); noise below
    # low_threshold is not tracked.
    np.testing.assert_array_equal(tracked.xyxy, dets.xyxy[:1])
    assert tracked.tracker_ids.tolist() == [1]
