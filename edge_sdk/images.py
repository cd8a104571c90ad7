"""Image files from folders nobody vetted: which files count, and reading them safely.

A calibration folder, an evaluation set or a folder source is outside input. OpenCV's own file
reading trusts the name and the file type: a name that is not UTF-8 crashes the process
(cv2.imread in OpenCV 5 segfaults on it), a FIFO named `x.jpg` blocks forever, and a link
leads anywhere. So files are listed here (regular files inside the folder) and read as bytes
(`np.fromfile`), then decoded from memory (`cv2.imdecode`), which never sees the name.
"""

from __future__ import annotations

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


def read_image(path: str | Path) -> np.ndarray | None:
    """A BGR image, or None when `path` is not a regular file holding an image."""
    if not _regular(Path(path)):
        return None
    try:
        data = np.fromfile(path, np.uint8)
    except (OSError, ValueError):  # unreadable, vanished, a NUL in the name
        return None
    if not data.size:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


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
