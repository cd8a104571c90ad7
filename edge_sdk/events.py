"""Events on top of tracks: started / ended, entered / left a zone, crossed a line.

Events are frozen dataclasses with `to_dict()` (a `type` key plus the fields), ready for a
JSONL or MQTT sink. `EventEngine` turns each frame's tracked detections into that frame's
events; zones and lines (`edge_sdk.zones`) report their own events, the engine adds the track
lifecycle and tells zones when a track is gone for good.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

from edge_sdk.errors import EdgeError
from edge_sdk.results import Detections

if TYPE_CHECKING:
    from edge_sdk.zones import LineCounter, PolygonZone


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"

    frame_index: int
    timestamp: float  # seconds, as the source reports them
    tracker_id: int
    class_id: int
    label: str | None = None
    source: str | None = None  # which camera, when one pipeline runs several

    def to_dict(self) -> dict:
        out = {"type": self.kind, **asdict(self)}
        if out["source"] is None:
            del out["source"]
        return out


@dataclass(frozen=True, kw_only=True)
class TrackStarted(Event):
    kind: ClassVar[str] = "track_started"


@dataclass(frozen=True, kw_only=True)
class TrackEnded(Event):
    """Emitted once the track has been unseen for more than `end_after_frames` frames."""

    kind: ClassVar[str] = "track_ended"
    first_frame: int
    last_frame: int  # last frame the track was seen; frame_index is when the end was decided


@dataclass(frozen=True, kw_only=True)
class ZoneEntered(Event):
    kind: ClassVar[str] = "zone_entered"
    zone: str


@dataclass(frozen=True, kw_only=True)
class ZoneLeft(Event):
    """The anchor left the polygon, or the track ended while inside it."""

    kind: ClassVar[str] = "zone_left"
    zone: str


@dataclass(frozen=True, kw_only=True)
class LineCrossed(Event):
    kind: ClassVar[str] = "line_crossed"
    line: str
    direction: str  # "in": from the line's left side to its right, "out": the other way
    in_count: int  # totals on this line after this crossing
    out_count: int


@dataclass
class _Seen:
    first_frame: int
    last_frame: int
    class_id: int
    label: str | None


class EventEngine:
    """Per-frame events from tracked detections; one engine per video stream.

    A track ends when it has not been seen for more than `end_after_frames` frames: set it to
    the tracker's lost-track buffer (ByteTrack's `track_buffer`), after which its id never
    returns. `close()` ends every open track at the end of a stream.
    """

    def __init__(
        self,
        zones: tuple[PolygonZone, ...] | list[PolygonZone] = (),
        lines: tuple[LineCounter, ...] | list[LineCounter] = (),
        end_after_frames: int = 30,
    ) -> None:
        if (
            isinstance(end_after_frames, bool)
            or not isinstance(end_after_frames, int)
            or (end_after_frames < 0)
        ):
            raise EdgeError(f"end_after_frames must be an integer >= 0, got {end_after_frames!r}")
        self.zones = tuple(zones)
        self.lines = tuple(lines)
        self.end_after_frames = end_after_frames
        self._tracks: dict[int, _Seen] = {}

    @classmethod
    def from_config(cls, config: dict, end_after_frames: int = 30) -> EventEngine:
        """Zones and lines from `{"zones": [...], "lines": [...]}` (see `zones.load_zones`)."""
        from edge_sdk.zones import load_zones  # zones imports this module's event types

        zones, lines = load_zones(config)
        return cls(zones, lines, end_after_frames)

    def update(self, detections: Detections, frame_index: int, timestamp: float) -> list[Event]:
        """This frame's events: started, zone/line events, then ended (each ordered by id)."""
        if detections.tracker_ids is None:
            raise ValueError("EventEngine needs tracked detections: run a tracker before it")
        tracked = detections[detections.tracker_ids >= 0]
        frame_index, timestamp = int(frame_index), float(timestamp)
        events: list[Event] = []
        labels = tracked.labels or (None,) * len(tracked)
        present = tracked.tracker_ids.tolist()
        rows = zip(present, tracked.class_ids.tolist(), labels, strict=True)
        for tid, cid, label in sorted(rows, key=lambda r: r[0]):
            seen = self._tracks.get(tid)
            if seen is None:
                self._tracks[tid] = _Seen(frame_index, frame_index, cid, label)
                events.append(
                    TrackStarted(frame_index=frame_index, timestamp=timestamp, tracker_id=tid,
                                 class_id=cid, label=label)
                )  # fmt: skip
            else:
                seen.last_frame, seen.class_id, seen.label = frame_index, cid, label
        for region in (*self.zones, *self.lines):
            events.extend(region.update(tracked, frame_index, timestamp))
        expired = sorted(
            t
            for t, seen in self._tracks.items()
            if frame_index - seen.last_frame > self.end_after_frames
        )
        events.extend(self._end(expired, frame_index, timestamp))
        return events

    def close(self, frame_index: int, timestamp: float) -> list[Event]:
        """End every open track (end of stream), leaving the zones they are in."""
        return self._end(sorted(self._tracks), int(frame_index), float(timestamp))

    def reset(self) -> None:
        self._tracks.clear()
        for region in (*self.zones, *self.lines):
            region.reset()

    def _end(self, ids: list[int], frame_index: int, timestamp: float) -> list[Event]:
        events: list[Event] = []
        for tid in ids:
            seen = self._tracks.pop(tid)
            common = {"frame_index": frame_index, "timestamp": timestamp, "tracker_id": tid,
                      "class_id": seen.class_id, "label": seen.label}  # fmt: skip
            for region in (*self.zones, *self.lines):
                events.extend(region.forget(**common))
            events.append(
                TrackEnded(**common, first_frame=seen.first_frame, last_frame=seen.last_frame)
            )
        return events
