"""Polygon zones and counting lines, in frame pixels, fed with tracked detections.

Each box is reduced to one anchor point (bottom-centre by default: where a person or car
touches the ground, which is what a floor zone or a road line is drawn on). A track that
vanishes for a few frames keeps its zone membership and line side; only the end of the track
(`forget`, called by `EventEngine`) clears them.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

from edge_sdk.errors import EdgeError
from edge_sdk.events import Event, LineCrossed, ZoneEntered, ZoneLeft
from edge_sdk.results import Detections

ANCHORS = ("bottom_center", "center", "top_center")
_Region = TypeVar("_Region", "PolygonZone", "LineCounter")


class ZoneError(EdgeError):
    """A zone or line definition is malformed; the message names the entry and the field."""


def anchor_points(xyxy: np.ndarray, anchor: str = "bottom_center") -> np.ndarray:
    """(N, 4) boxes -> (N, 2) points; image y grows downwards, so "bottom" is y2."""
    x = (xyxy[:, 0] + xyxy[:, 2]) / 2
    y = {
        "bottom_center": xyxy[:, 3],
        "center": (xyxy[:, 1] + xyxy[:, 3]) / 2,
        "top_center": xyxy[:, 1],
    }[anchor]
    return np.stack([x, y], axis=1).astype(np.float64)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule for (N, 2) points against an (M, 2) polygon, all edges at once."""
    x, y = points[:, :1], points[:, 1:]  # (N, 1): broadcast against the M edges
    x1, y1 = polygon[:, 0], polygon[:, 1]
    following = np.concatenate((polygon[1:], polygon[:1]))  # each edge's second vertex
    x2, y2 = following[:, 0], following[:, 1]
    straddles = (y1 > y) != (y2 > y)  # the edge spans the point's height
    dy = np.where(y2 == y1, 1.0, y2 - y1)  # horizontal edges never straddle; avoid 0 / 0
    x_cross = x1 + (y - y1) * (x2 - x1) / dy
    return (straddles & (x < x_cross)).sum(axis=1) % 2 == 1


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    """A finite float: a 400-digit integer from a JSON file is a number but not one."""
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        return False


def _points(value: object, what: str, count: int | None = None) -> np.ndarray:
    """[[x, y], ...] of finite numbers -> (M, 2) float64, or ZoneError naming `what`."""
    pairs = value if isinstance(value, (list, tuple)) else None
    ok = pairs is not None and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_number(v) for v in p) for p in pairs
    )
    if not ok:
        raise ZoneError(f"{what} must be a list of [x, y] number pairs, got {value!r:.200}")
    for v in (v for p in pairs for v in p):
        if not _finite(v):
            shown = f"{str(v)[:12]}... ({len(str(v))} digits)" if isinstance(v, int) else v
            raise ZoneError(f"{what} must be [x, y] number pairs in pixels; {shown} is not finite")
    return np.asarray(pairs, np.float64).reshape(-1, 2)


def _check_name(name: object, kind: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ZoneError(f"a {kind} needs a non-empty string name, got {name!r}")
    return name


def _check_anchor(anchor: object) -> str:
    if anchor not in ANCHORS:
        raise ZoneError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    return str(anchor)


def _rows(tracked: Detections, *columns: object) -> list[tuple]:
    """(tracker id, class id, label, *columns) per tracked box, by id; untracked (-1) skipped."""
    if tracked.tracker_ids is None:
        raise ValueError("zones and lines need tracked detections: run a tracker before them")
    labels = tracked.labels or (None,) * len(tracked)
    ids, class_ids = tracked.tracker_ids.tolist(), tracked.class_ids.tolist()
    rows = zip(ids, class_ids, labels, *columns, strict=True)
    return sorted((r for r in rows if r[0] >= 0), key=lambda r: r[0])


class PolygonZone:
    """Which tracks are inside a polygon; `update` reports who entered and who left."""

    def __init__(self, name: str, polygon: object, anchor: str = "bottom_center") -> None:
        self.name = _check_name(name, "zone")
        self.polygon = _points(polygon, f"zone {name!r} polygon")
        if len(self.polygon) < 3:
            raise ZoneError(f"zone {name!r} polygon needs at least 3 points, got {len(polygon)}")
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 1e-9:
            raise ZoneError(f"zone {name!r} polygon has zero area (its points are collinear)")
        self.anchor = _check_anchor(anchor)
        self._inside: set[int] = set()

    @property
    def tracker_ids(self) -> list[int]:
        """Ids inside now (occluded tracks included until they end)."""
        return sorted(self._inside)

    @property
    def count(self) -> int:
        return len(self._inside)

    def update(self, tracked: Detections, frame_index: int, timestamp: float) -> list[Event]:
        inside = points_in_polygon(anchor_points(tracked.xyxy, self.anchor), self.polygon)
        events: list[Event] = []
        for tid, cid, label, now_inside in _rows(tracked, inside.tolist()):
            was_inside = tid in self._inside
            if now_inside == was_inside:
                continue
            kind = ZoneEntered if now_inside else ZoneLeft
            (self._inside.add if now_inside else self._inside.discard)(tid)
            events.append(
                kind(frame_index=frame_index, timestamp=timestamp, tracker_id=tid, class_id=cid,
                     label=label, zone=self.name)
            )  # fmt: skip
        return events

    def forget(self, *, tracker_id: int, **event_fields: object) -> list[Event]:
        """The track ended: if it was inside, it has left."""
        if tracker_id not in self._inside:
            return []
        self._inside.discard(tracker_id)
        return [ZoneLeft(tracker_id=tracker_id, zone=self.name, **event_fields)]

    def reset(self) -> None:
        self._inside.clear()


class LineCounter:
    """Counts tracks crossing the segment start -> end, by direction.

    Sides are as seen on screen looking from `start` towards `end`: "in" is a crossing from
    the left side to the right side, "out" the reverse (swap start and end to swap them). For a
    line drawn left to right, moving down the image is "in". Only crossings of the segment
    itself count, not of its extension; a track occluded on one side and seen again on the
    other is counted once.
    """

    def __init__(
        self, name: str, start: object, end: object, anchor: str = "bottom_center"
    ) -> None:
        self.name = _check_name(name, "line")
        self.start, self.end = _points([start, end], f"line {name!r} start/end")
        if np.array_equal(self.start, self.end):
            raise ZoneError(f"line {name!r} start and end are the same point")
        self.anchor = _check_anchor(anchor)
        self.in_count = 0
        self.out_count = 0
        self._last: dict[int, tuple[int, np.ndarray]] = {}  # id -> (side, anchor on that side)

    def side(self, points: np.ndarray) -> np.ndarray:
        """-1 left of the line, +1 right, 0 on it (sign of the cross product; y points down)."""
        d = self.end - self.start
        rel = points - self.start
        return np.sign(d[0] * rel[:, 1] - d[1] * rel[:, 0]).astype(np.int64)

    def update(self, tracked: Detections, frame_index: int, timestamp: float) -> list[Event]:
        points = anchor_points(tracked.xyxy, self.anchor)
        events: list[Event] = []
        for tid, cid, label, side, point in _rows(tracked, self.side(points).tolist(), points):
            if side == 0:
                continue  # on the line: wait until it is clearly on one side
            previous = self._last.get(tid)
            self._last[tid] = (side, point)
            if previous is None or previous[0] == side or not self._spans(previous[1], point):
                continue
            direction = "in" if side > 0 else "out"
            if direction == "in":
                self.in_count += 1
            else:
                self.out_count += 1
            events.append(
                LineCrossed(frame_index=frame_index, timestamp=timestamp, tracker_id=tid,
                            class_id=cid, label=label, line=self.name, direction=direction,
                            in_count=self.in_count, out_count=self.out_count)
            )  # fmt: skip
        return events

    def _spans(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Does the move a -> b pass between the line's ends (not beyond them)?"""
        move = b - a
        ends = np.stack([self.start, self.end]) - a
        sides = np.sign(move[0] * ends[:, 1] - move[1] * ends[:, 0])
        return bool(sides[0] * sides[1] <= 0)

    def forget(self, *, tracker_id: int, **event_fields: object) -> list[Event]:
        self._last.pop(tracker_id, None)
        return []

    def reset(self) -> None:
        self._last.clear()
        self.in_count = self.out_count = 0


def load_zones(config: object) -> tuple[list[PolygonZone], list[LineCounter]]:
    """Zones and lines from `{"zones": [{"name", "polygon", "anchor"?}],
    "lines": [{"name", "start", "end", "anchor"?}]}` (a parsed JSON file).
    """
    if not isinstance(config, dict):
        raise ZoneError('zone config must be a JSON object like {"zones": [...], "lines": [...]}')
    unknown = set(config) - {"zones", "lines"}
    if unknown:
        raise ZoneError(f"zone config has unknown keys {sorted(unknown)}; expected zones, lines")
    zones = [
        _build(PolygonZone, entry, f"zones[{i}]", ("name", "polygon"))
        for i, entry in enumerate(_entries(config, "zones"))
    ]
    lines = [
        _build(LineCounter, entry, f"lines[{i}]", ("name", "start", "end"))
        for i, entry in enumerate(_entries(config, "lines"))
    ]
    for kind, items in (("zone", zones), ("line", lines)):
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ZoneError(f"{kind} names must be unique, repeated: {duplicates}")
    return zones, lines


def _entries(config: dict, key: str) -> list:
    entries = config.get(key, [])
    if not isinstance(entries, list):
        raise ZoneError(f"zone config {key!r} must be a list, got {type(entries).__name__}")
    return entries


def _build(cls: type[_Region], entry: object, where: str, required: tuple[str, ...]) -> _Region:
    """One zone or line; errors say which entry (`zones[2]`) and which field is wrong."""
    if not isinstance(entry, dict):
        raise ZoneError(f"{where} must be an object with {', '.join(required)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ZoneError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(entry) - set(required) - {"anchor"})
    if unknown:
        raise ZoneError(
            f"{where}: unknown keys {unknown}; expected {', '.join(required)} and optional anchor"
        )
    try:
        return cls(**entry)
    except ZoneError as exc:
        raise ZoneError(f"{where}: {exc}") from None
