"""Image files from folders nobody vetted: which files count, and reading them safely.

A calibration folder, an evaluation set or a folder source is outside input. OpenCV's own file
reading trusts the name and the file type: a name that is not UTF-8 crashes the process
(cv2.imread in OpenCV 5 segfaults on it), a FIFO named `x.jpg` blocks forever, and a link
leads anywhere. So files are listed here (regular files inside the folder) and read as bytes
(`np.fromfile`), then decoded from memory (`cv2.imdecode`), which never sees the name.

A JPEG cut short (a camera's upload still in progress, a copy onto a full disk) is refused
by the pinned OpenCV 5 without a reason, while OpenCV 3/4 builds (as JetPack ships, for
GStreamer) often decode it with a warning and the missing part grey, and calibrating or
inferring on that gives wrong answers quietly. So a JPEG whose segments end before its
end-of-image marker is refused here, whatever OpenCV is installed, with the reason.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folder: Path, hidden: bool = True) -> list[Path]:
    """Image files under `folder` (recursive, sorted): regular files only, and links only when
    they resolve inside `folder`. `hidden=False` skips names starting with '.'."""
    root = folder.resolve()
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not hidden and any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        if _inside(path, root) and _regular(path):
            found.append(path)
    return sorted(found)


class ImageReadError(ValueError):
    """Why a file could not be read as an image (one line, for the user)."""


def read_image(path: str | Path) -> np.ndarray | None:
    """A BGR image, or None when `path` is not a regular file holding a whole image."""
    try:
        return load_image(path)
    except ImageReadError:
        return None


def load_image(path: str | Path) -> np.ndarray:
    """A BGR image; `ImageReadError` says why `path` is not a regular file holding one."""
    if not _regular(Path(path)):
        raise ImageReadError("missing or not a regular file")
    try:
        data = np.fromfile(path, np.uint8)
    except (OSError, ValueError):  # unreadable, vanished, a NUL in the name
        raise ImageReadError("cannot be read") from None
    if not data.size:
        raise ImageReadError("the file is empty")
    if jpeg_truncated(data.tobytes()):
        raise ImageReadError("the JPEG is truncated (it ends before its end-of-image marker: "
                             "a copy or upload that did not finish?)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError("not an image OpenCV can decode")
    return image


# After a scan's entropy-coded data, the next marker: 0xFF followed by anything but a stuffed
# zero, a restart marker (D0-D7) or another 0xFF (fill).
_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field


def jpeg_truncated(data: bytes) -> bool:
    """Whether `data` is a JPEG whose segments run out before the end-of-image marker.

    Walks the segments (each marker's length, and a scan's data up to the next marker) rather
    than looking for 0xFFD9 at the end: files may carry bytes after the image (a motion
    photo's video, a maker's trailer) and an embedded thumbnail has its own end marker. Data
    that does not parse as JPEG segments is left to the decoder to judge.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    pos, size = 2, len(data)
    while True:
        while pos < size and data[pos] == 0xFF and pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > size:
            return True
        if data[pos] != 0xFF:
            return False  # not a marker where one must be: not ours to judge
        marker = data[pos + 1]
        if marker == 0xD9:
            return False
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            return True
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > size:
            return True
        if marker == 0xDA:  # start of scan: its data runs to the next marker
            found = _AFTER_SCAN.search(data, end)
            if found is None:
                return True
            end = found.start()
        pos = end


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)  # a FIFO or device would block or never end
    except (OSError, ValueError):  # missing, a link loop, a NUL in the name
        return False


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, links followed, stays under `root` (the folder, resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False
