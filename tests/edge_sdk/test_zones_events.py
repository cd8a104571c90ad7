"""Zones, lines and track lifecycle events on scripted tracks with known answers.

Tracks are given directly as (tracker id, anchor x, anchor y): boxes are built so their
bottom-centre (the default anchor) is exactly that point.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.events import EventEngine, LineCrossed, TrackEnded, TrackStarted, ZoneEntered
from edge_sdk.results import Detections
from edge_sdk.tracking import ByteTrack
from edge_sdk.zones import (
    LineCounter,
    PolygonZone,
    ZoneError,
    anchor_points,
    load_zones,
    points_in_polygon,
)

SQUARE = [[100, 100], [200, 100], [200, 200], [100, 200]]
CONFIG = {
    "zones": [{"name": "square", "polygon": SQUARE}],
    "lines": [{"name": "gate", "start": [0, 300], "end": [400, 300]}],
}


def tracked(*tracks: tuple[int, float, float], class_id: int = 0) -> Detections:
    """A frame of tracked boxes (20x40) whose bottom-centre is at each (x, y)."""
    if not tracks:
        return Detections.empty().with_tracker_ids(np.zeros(0, np.int64))
    ids, xs, ys = (np.array(v, np.float32) for v in zip(*tracks, strict=True))
    return Detections(
        xyxy=np.stack([xs - 10, ys - 40, xs + 10, ys], axis=1),
        scores=np.full(len(ids), 0.9, np.float32),
        class_ids=np.full(len(ids), class_id, np.int64),
        tracker_ids=ids.astype(np.int64),
        labels=("person",) * len(ids),
    )


def play(engine: EventEngine, frames: list[list[tuple[int, float, float]]]) -> list[tuple]:
    """Run frames 0.. (timestamp = frame / 10 s); events as (frame, type, id, where, direction)."""
    out = []
    for i, tracks in enumerate(frames):
        for e in engine.update(tracked(*tracks), frame_index=i, timestamp=i / 10):
            where = getattr(e, "zone", None) or getattr(e, "line", None)
            out.append((e.frame_index, e.kind, e.tracker_id, where, getattr(e, "direction", None)))
    return out


@pytest.mark.parametrize(
    ("point", "inside"),
    [((150, 150), True), ((50, 150), False), ((250, 150), False), ((150, 250), False),
     ((199, 101), True), ((150, 99), False)],
)  # fmt: skip
def test_points_in_square(point, inside):
    polygon = np.array(SQUARE, np.float64)
    assert points_in_polygon(np.array([point], np.float64), polygon).tolist() == [inside]


def test_points_in_concave_polygon():
    # A "U": the notch (150, 120) is outside although it lies within the bounding box.
    u = np.array([[100, 100], [140, 100], [140, 150], [160, 150], [160, 100], [200, 100],
                  [200, 200], [100, 200]], np.float64)  # fmt: skip
    points = np.array([[120, 120], [150, 120], [150, 170], [180, 120]], np.float64)
    assert points_in_polygon(points, u).tolist() == [True, False, True, True]


@pytest.mark.parametrize(
    ("anchor", "point"),
    [("bottom_center", [15, 40]), ("center", [15, 25]), ("top_center", [15, 10])],
)
def test_anchor_points(anchor, point):
    xyxy = np.array([[10, 10, 20, 40]], np.float32)
    assert anchor_points(xyxy, anchor).tolist() == [point]


def test_zone_enter_and_leave_with_lifecycle():
    # Track 7 walks right along y = 150 through the square (x 100..200) and stays in view.
    frames = [[(7, x, 150)] for x in (50, 90, 110, 150, 190, 210, 250)]
    events = play(EventEngine.from_config(CONFIG), frames)
    assert events == [
        (0, "track_started", 7, None, None),
        (2, "zone_entered", 7, "square", None),
        (5, "zone_left", 7, "square", None),
    ]


def test_occlusion_inside_a_zone_is_not_a_leave_but_ending_inside_is():
    engine = EventEngine.from_config(CONFIG, end_after_frames=3)
    zone = engine.zones[0]
    frames = [[(1, 150, 150)], [], [], [(1, 155, 150)], [], [], [], [], []]
    events = play(engine, frames)
    assert events == [
        (0, "track_started", 1, None, None),
        (0, "zone_entered", 1, "square", None),
        # gone in frames 4-8: unseen for more than 3 frames at frame 7
        (7, "zone_left", 1, "square", None),
        (7, "track_ended", 1, None, None),
    ]
    assert zone.count == 0


def test_zone_occupancy():
    zone = PolygonZone("square", SQUARE)
    zone.update(tracked((1, 150, 150), (2, 120, 180), (3, 300, 300)), 0, 0.0)
    assert zone.tracker_ids == [1, 2] and zone.count == 2


# Line from (0, 300) to (400, 300), drawn left to right: its left side (as seen looking from
# start to end) is above it on screen, so moving down is "in".
@pytest.mark.parametrize(
    ("start", "end", "ys", "expected"),
    [
        ([0, 300], [400, 300], (280, 290, 310, 320), [(2, "in")]),
        ([0, 300], [400, 300], (320, 310, 290, 280), [(2, "out")]),
        ([400, 300], [0, 300], (280, 290, 310, 320), [(2, "out")]),  # reversed line
        ([0, 300], [400, 300], (290, 310, 290, 310), [(1, "in"), (2, "out"), (3, "in")]),
        ([0, 300], [400, 300], (290, 300, 300, 310), [(3, "in")]),  # resting on the line
        ([0, 300], [400, 300], (280, 290, 295, 299), []),  # approaches, never crosses
    ],
)
def test_line_crossing_direction(start, end, ys, expected):
    line = LineCounter("gate", start, end)
    got = []
    for i, y in enumerate(ys):
        got += [(e.frame_index, e.direction) for e in line.update(tracked((1, 200, y)), i, 0.0)]
    assert got == expected
    assert (line.in_count, line.out_count) == (
        sum(d == "in" for _, d in expected),
        sum(d == "out" for _, d in expected),
    )


def test_crossing_beyond_the_segment_end_does_not_count():
    line = LineCounter("gate", [0, 300], [400, 300])
    for i, y in enumerate((280, 320)):
        assert line.update(tracked((1, 450, y)), i, 0.0) == []
    assert line.in_count == 0


def test_line_counts_several_tracks_and_occluded_crossing_once():
    engine = EventEngine.from_config(CONFIG)
    frames = [
        [(1, 100, 280), (2, 200, 320), (3, 300, 280)],
        [(1, 100, 320), (2, 200, 280)],  # 1 in, 2 out; 3 hidden
        [(1, 100, 330), (2, 200, 270)],
        [(3, 300, 330)],  # 3 seen again on the other side: one crossing, "in"
    ]
    crossings = [e for e in play(engine, frames) if e[1] == "line_crossed"]
    assert crossings == [
        (1, "line_crossed", 1, "gate", "in"),
        (1, "line_crossed", 2, "gate", "out"),
        (3, "line_crossed", 3, "gate", "in"),
    ]
    gate = engine.lines[0]
    assert (gate.in_count, gate.out_count) == (2, 1)


def test_event_objects_and_dicts():
    engine = EventEngine(lines=[LineCounter("gate", [0, 300], [400, 300])])
    engine.update(tracked((4, 100, 290), class_id=2), 10, 1.0)
    (crossed,) = engine.update(tracked((4, 100, 310), class_id=2), 11, 1.1)
    assert isinstance(crossed, LineCrossed)
    assert crossed.to_dict() == {
        "type": "line_crossed", "frame_index": 11, "timestamp": 1.1, "tracker_id": 4,
        "class_id": 2, "label": "person", "line": "gate", "direction": "in",
        "in_count": 1, "out_count": 0,
    }  # fmt: skip
    with pytest.raises(AttributeError):
        crossed.direction = "out"  # frozen
    (ended,) = engine.close(12, 1.2)
    assert isinstance(ended, TrackEnded)
    assert (ended.first_frame, ended.last_frame, ended.frame_index) == (10, 11, 12)
    assert ended.to_dict()["type"] == "track_ended"


def test_engine_needs_tracked_detections():
    with pytest.raises(ValueError, match="run a tracker"):
        EventEngine().update(Detections.empty(), 0, 0.0)


def test_untracked_rows_are_ignored():
    dets = tracked((1, 150, 150), (2, 150, 150))
    dets = dets.with_tracker_ids(np.array([1, -1]))
    events = EventEngine.from_config(CONFIG).update(dets, 0, 0.0)
    assert {e.tracker_id for e in events} == {1}


def test_reset_forgets_tracks_zones_and_counts():
    engine = EventEngine.from_config(CONFIG)
    play(engine, [[(1, 150, 290)], [(1, 150, 310)]])
    engine.reset()
    assert engine.lines[0].in_count == 0
    assert [e[1] for e in play(engine, [[(1, 150, 150)]])] == ["track_started", "zone_entered"]


def test_bytetrack_to_events_end_to_end():
    # Detector boxes (40x80) of one person walking down 10 px a frame through the square and
    # over the line; anchor y = 65 + 10 i never lands exactly on an edge.
    tracker, engine = ByteTrack(), EventEngine.from_config(CONFIG, end_after_frames=30)
    events = []
    for i in range(35):
        y = 65 + 10 * i
        dets = Detections(
            xyxy=np.array([[130, y - 80, 170, y]], np.float32),
            scores=np.array([0.9], np.float32),
            class_ids=np.array([0]),
        )
        events += engine.update(tracker.update(dets), i, i / 30)
    events += engine.close(99, 3.3)
    assert [(type(e).__name__, e.frame_index, e.tracker_id) for e in events] == [
        ("TrackStarted", 1, 1),  # confirmed on its second frame
        ("ZoneEntered", 4, 1),  # y 105
        ("ZoneLeft", 14, 1),  # y 205
        ("LineCrossed", 24, 1),  # y 305
        ("TrackEnded", 99, 1),
    ]
    assert isinstance(events[0], TrackStarted) and isinstance(events[1], ZoneEntered)
    assert events[3].direction == "in"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ([], "JSON object"),
        ({"zone": []}, "unknown keys"),
        ({"zones": {}}, "'zones' must be a list"),
        ({"zones": ["square"]}, r"zones\[0\] must be an object"),
        ({"zones": [{"name": "a"}]}, r"zones\[0\]: missing polygon"),
        ({"zones": [{"name": "a", "polygon": SQUARE, "colour": "red"}]}, "unknown keys"),
        ({"zones": [{"name": "", "polygon": SQUARE}]}, "non-empty string name"),
        ({"zones": [{"name": "a", "polygon": SQUARE[:2]}]}, "at least 3 points"),
        ({"zones": [{"name": "a", "polygon": [[0, 0], [1, "x"], [2, 2]]}]}, r"\[x, y\] number"),
        ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 1], [2, 2]]}]}, "zero area"),
        ({"zones": [{"name": "a", "polygon": SQUARE, "anchor": "feet"}]}, "anchor must be"),
        ({"zones": [{"name": "a", "polygon": SQUARE}] * 2}, "repeated: .'a'."),
        ({"lines": [{"name": "g", "start": [0, 0]}]}, r"lines\[0\]: missing end"),
        ({"lines": [{"name": "g", "start": [0, 0], "end": [0, 0]}]}, "same point"),
        ({"lines": [{"name": "g", "start": [0, 0], "end": [1, float("nan")]}]}, "number pairs"),
    ],
)
def test_bad_zone_config(config, match):
    with pytest.raises(ZoneError, match=match):
        load_zones(config)


def test_good_config_loads_with_anchor():
    zones, lines = load_zones(
        {"zones": [{"name": "a", "polygon": SQUARE, "anchor": "center"}], "lines": []}
    )
    assert zones[0].anchor == "center" and lines == []
    assert load_zones({}) == ([], [])
