"""Multi-object trackers behind one tiny contract: `update(detections) -> detections`, `reset()`.

`build_tracker("bytetrack", track_buffer=60)` (or "ocsort"; `smooth=True` for steadier boxes)
builds one by name; each `update` returns the
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
from edge_sdk.tracking.ocsort import OcSort
from edge_sdk.tracking.smoothing import SmoothedTracker

__all__ = [
    "ByteTrack",
    "OcSort",
    "SmoothedTracker",
    "Tracker",
    "TrackerError",
    "build_tracker",
    "register_tracker",
    "tracker_names",
]
