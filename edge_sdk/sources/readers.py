"""Frame readers: the blocking, single-threaded part of a source (OpenCV capture, image files).

A reader knows how to open, read one frame and reopen where it left off; `Source` adds the
capture thread, buffering and reconnection around any reader, so a new kind of input is one
small class here.
"""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from edge_sdk.errors import SourceError
from edge_sdk.images import IMAGE_SUFFIXES, image_files, read_image

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
NETWORK_TIMEOUT_MS = 5000  # an unreachable stream fails after this instead of OpenCV's 30 s
# The ports a URL without one means; udp:// has no connection to probe.
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}
PROBE_TIMEOUT_S = 2.0  # only to tell a refusal from silence once the open has failed


class Reader(Protocol):
    name: str
    live: bool  # a camera or stream: frames keep coming whether or not we read them
    fps: float | None  # nominal rate, if the container or device reports one
    current: str  # what the last frame came from (the image file, for a folder)

    def open(self) -> None:
        """Open (or reopen after a failure, continuing where reading stopped); SourceError."""
        ...

    def read(self) -> tuple[np.ndarray, float] | None:
        """(BGR frame, timestamp in seconds), or None at the end of a finite source."""
        ...

    def close(self) -> None: ...


SHORT_FILE = 0.9  # a video file ending before this share of its announced frames was cut


class OpenCvReader:
    """Camera index, video file or stream URL through `cv2.VideoCapture`."""

    def __init__(self, target: int | str, live: bool) -> None:
        self.target = target
        self.live = live
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.current = self.name
        self.fps: float | None = None
        self._cap: cv2.VideoCapture | None = None
        self._next_index = 0  # file sources resume here after a reopen
        self.announced = 0  # frames a file's header announces (0: unknown)
        self.ended_early: str | None = None  # why a file's end came too soon, if it did

    def open(self) -> None:
        self.close()
        started = time.monotonic()
        if isinstance(self.target, str) and self.target.startswith(STREAM_SCHEMES):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]  # fmt: skip
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            waited = time.monotonic() - started
            raise SourceError(f"cannot open {self.name}: {self._open_hint(waited)}")
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue adds latency too
        elif self._next_index:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self._next_index)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else None
        if not self.live and not self.announced:
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.announced = int(count) if 0 < count < 1e9 else 0
        self._cap = cap

    def read(self) -> tuple[np.ndarray, float] | None:
        if self._cap is None:
            raise SourceError(f"{self.name} is not open")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.live:
                raise SourceError(f"{self.name} stopped delivering frames")
            self._check_length()
            return None
        self._next_index += 1
        if self.live:
            return frame, time.time()
        pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        fps = self.fps or 0.0
        ts = pos_ms / 1000.0 if pos_ms > 0 or not fps else (self._next_index - 1) / fps
        return frame, round(ts, 6)

    def _check_length(self) -> None:
        """A file that ends well before the frame count its header announces was cut short
        (a copy or recording that did not finish): say so, rather than end as if complete.
        Headers estimate the count for some containers, hence the margin."""
        if self.announced and self._next_index < SHORT_FILE * self.announced:
            self.ended_early = (f"the file ended after {self._next_index} of the "
                                f"{self.announced} frames its header announces; it may be "
                                "truncated or damaged")  # fmt: skip

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _open_hint(self, waited: float) -> str:
        if isinstance(self.target, int):
            return "no such camera, or it is in use by another program"
        if not self.live:  # a file (a text file was once called "not a camera")
            return "not a video OpenCV can decode"
        if not self.target.startswith(STREAM_SCHEMES):  # a device file such as /dev/video0
            return "not a camera OpenCV can open, or it is in use by another program"
        silent = f"nothing answered there within {NETWORK_TIMEOUT_MS // 1000} s"
        if waited >= 0.9 * NETWORK_TIMEOUT_MS / 1000:  # the open itself timed out
            return silent
        return stream_failure(self.target) or silent


def stream_failure(url: str) -> str | None:
    """Why a stream URL that failed to open at once failed: OpenCV reports only that it did,
    so connect to its host and port ourselves. None when that cannot tell (udp://, timeout)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number, or out of range
        return "the URL's port is not a number from 1 to 65535"
    if not host or port is None:
        return None
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except ConnectionRefusedError:
        return (f"{where} refused the connection: nothing listens on that port (is the "
                "camera or stream server running, and is the port right?)")
    except socket.gaierror:
        return f"host {host} not found: check the address"
    except TimeoutError:
        return None
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    return (f"{where} accepted the connection but no stream opened: check the path and any "
            "user and password in the URL")


class ImageFolderReader:
    """Every image in a folder (sorted, recursive), or one image file; unreadable files skipped."""

    live = False
    fps = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = self.current = str(path)
        self.skipped: list[str] = []
        self._files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        if self._files:
            return
        if self.path.is_file():
            self._files = [self.path]
        else:
            self._files = image_files(self.path)
        if not self._files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(f"folder {self.path} has no images (looked for {suffixes})")

    def read(self) -> tuple[np.ndarray, float] | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            image = read_image(path)
            if image is not None:
                self.current = str(path)
                return image, time.time()
            self.skipped.append(str(path))
        return None

    def close(self) -> None:
        pass


MAX_CAMERA = 9999  # camera indexes OpenCV takes; beyond, its C long overflows or it errors


def is_camera_index(text: str) -> bool:
    """'0', ' 2 ': a camera index as written in a flag or a sources file (ASCII digits only:
    str.isdigit also takes '²', which int() refuses)."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def camera_index(spec: object) -> int | None:
    """The camera index `spec` names (an int, or digits), None if it names something else;
    SourceError for an index no camera can have."""
    if isinstance(spec, bool) or not (isinstance(spec, int) or
                                      (isinstance(spec, str) and is_camera_index(spec))):
        return None
    index = int(spec)
    if not 0 <= index <= MAX_CAMERA:
        raise SourceError(f"camera index {spec} is out of range: cameras are numbered 0 to "
                          f"{MAX_CAMERA} (0 is the first)")
    return index


def reader_for(spec: int | str | Path) -> Reader:
    """The reader a source spec names: camera index, stream URL, image/folder, or video file."""
    if isinstance(spec, bool):
        raise SourceError(f"invalid source {spec!r}")
    if isinstance(spec, str) and not spec.strip():  # Path("") would be the current folder
        raise SourceError("source is empty: give a camera index (0), a video file, an image "
                          "or a folder of images, or a stream URL")
    index = camera_index(spec)
    if index is not None:
        return OpenCvReader(index, live=True)
    text = str(spec)
    if text.lower().startswith(STREAM_SCHEMES):
        return OpenCvReader(text, live=True)
    path = Path(text).expanduser()
    if _char_device(path):  # /dev/video0: a V4L2 camera named by its device file
        return OpenCvReader(str(path), live=True)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return ImageFolderReader(path)
    if path.is_file():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # OpenCV's capture crashes the process on such a name
            raise SourceError(f"video file name {text!r} is not valid UTF-8; rename the file "
                              "(or link it under a plain name) and pass that") from None
        return OpenCvReader(str(path), live=False)
    raise SourceError(
        f"source {text} not found: give a camera index (0), a video file, an image or a folder "
        "of images, or a stream URL (rtsp://, http://)"
    )


def _char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except (OSError, ValueError):
        return False
