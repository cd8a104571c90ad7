"""Video sources behind one interface: camera index, video file, stream URL, image folder.

    source = open_source("video.mp4").start()
    while (frame := source.read()) is not None:
        ...

Capture runs in its own thread; see `capture.Source` for buffering and reconnection.
"""

from __future__ import annotations

from edge_sdk.sources.buffer import BoundedQueue
from edge_sdk.sources.capture import Source, SourceStats, VideoFrame, open_source
from edge_sdk.sources.readers import ImageFolderReader, OpenCvReader, Reader, reader_for

__all__ = [
    "BoundedQueue",
    "ImageFolderReader",
    "OpenCvReader",
    "Reader",
    "Source",
    "SourceStats",
    "VideoFrame",
    "open_source",
    "reader_for",
]
