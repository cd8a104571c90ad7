"""Multi-object trackers behind one tiny contract: `update(detections) -> detections`, `reset()`.

`build_tracker("bytetrack", track_buffer=60)` builds one by name; each `update` returns the
frame's tracked detections with stable `tracker_ids`. One tracker instance per video stream.
"""

from __future__ import annotations

from edge_sdk.tracking.base import (
    Tracker,
    TrackerError,
    build_tracker,
    register_tracker,
    tracker_names,
)
from edge_sdk.tracking.bytetrack import ByteTrack

__all__ = [
    "ByteTrack",
    "Tracker",
    "TrackerError",
    "build_tracker",
    "register_tracker",
    "tracker_names",
]
