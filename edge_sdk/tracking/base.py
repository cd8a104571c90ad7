"""The tracker contract and the registry that builds trackers by name.

A tracker takes one frame's detections and returns the ones it tracks, with `tracker_ids` set;
`reset()` forgets everything (a new video). The pipeline and the CLI only know this contract
and the registry, so a new tracker is one module with a `@register_tracker` line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from edge_sdk.errors import EdgeError
from edge_sdk.results import Detections


class TrackerError(EdgeError):
    """An unknown tracker name or bad tracker parameters."""


class Tracker(ABC):
    @abstractmethod
    def update(self, detections: Detections) -> Detections:
        """Detections of this frame that belong to confirmed tracks, with `tracker_ids` set."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all tracks and restart ids at 1, e.g. before the next video."""


TrackerFactory = Callable[..., Tracker]
_REGISTRY: dict[str, TrackerFactory] = {}


def register_tracker(name: str) -> Callable[[TrackerFactory], TrackerFactory]:
    def add(factory: TrackerFactory) -> TrackerFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def tracker_names() -> list[str]:
    return sorted(_REGISTRY)


def build_tracker(name: str, *, smooth: bool = False, **params: object) -> Tracker:
    """`smooth`: Kalman-smooth the output boxes (tracking/smoothing.py)."""
    if name not in _REGISTRY:
        raise TrackerError(
            f"unknown tracker {name!r}; this runtime knows: {', '.join(tracker_names())}"
        )
    try:
        tracker = _REGISTRY[name](**params)
    except TypeError as exc:
        raise TrackerError(f"bad parameters for tracker {name!r}: {exc}") from None
    if smooth:
        from edge_sdk.tracking.smoothing import SmoothedTracker

        return SmoothedTracker(tracker)
    return tracker
