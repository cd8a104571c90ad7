"""Annotated video sink: frames with boxes, labels, track ids, zones and line counts, via OpenCV.

Zone occupancy and line totals are counted from the events the sink receives, so the sink
needs nothing from the pipeline's thread. The writer opens on the first frame (its size is
the video's); later frames of another size (a folder of images) are resized to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from edge_sdk.annotate import annotate
from edge_sdk.events import LineCrossed, ZoneEntered, ZoneLeft
from edge_sdk.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from edge_sdk.pipeline import FrameResult, StreamInfo

CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "XVID", ".mkv": "XVID"}
DEFAULT_FPS = 10.0


class AnnotatedVideoSink(Sink):
    def __init__(self, path: str | Path, *, fps: float | None = None) -> None:
        self.path = Path(path)
        self.name = f"video {self.path.name}"
        suffix = self.path.suffix.lower()
        if suffix not in CODECS:
            raise SinkError(f"cannot write video {self.path}: use one of "
                            f"{', '.join(sorted(CODECS))}")  # fmt: skip
        if not self.path.parent.is_dir():
            raise SinkError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fourcc = cv2.VideoWriter_fourcc(*CODECS[suffix])
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._info: StreamInfo | None = None
        self._inside: dict[str, set[int]] = {}
        self._crossings: dict[str, tuple[int, int]] = {}

    def open(self, info: StreamInfo) -> None:
        self._info = info
        self.fps = self.fps or info.fps or DEFAULT_FPS
        self._inside = {name: set() for name, _ in info.zones}
        self._crossings = {name: (0, 0) for name, _, _ in info.lines}

    def write(self, result: FrameResult) -> None:
        self._count(result.events)
        info = self._info
        image = annotate(
            result.frame.image, result.result,
            zones=info.zones if info else (), lines=info.lines if info else (),
            zone_counts={k: len(v) for k, v in self._inside.items()},
            line_counts=self._crossings,
        )  # fmt: skip
        if self._writer is None:
            self._open_writer(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _open_writer(self, width: int, height: int) -> None:
        writer = cv2.VideoWriter(str(self.path), self.fourcc, float(self.fps or DEFAULT_FPS),
                                 (width, height))  # fmt: skip
        if not writer.isOpened():
            raise SinkError(f"OpenCV cannot write {self.path} ({width}x{height})")
        self._writer, self._size = writer, (width, height)

    def _count(self, events: tuple) -> None:
        for e in events:
            if isinstance(e, ZoneEntered):
                self._inside.setdefault(e.zone, set()).add(e.tracker_id)
            elif isinstance(e, ZoneLeft):
                self._inside.setdefault(e.zone, set()).discard(e.tracker_id)
            elif isinstance(e, LineCrossed):
                self._crossings[e.line] = (e.in_count, e.out_count)
