"""Making a rename survive a power cut: the one folder fsync the device store, the sync outbox
and the fleet's rollout state share (sync may import edge_sdk, never the other way round)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename into it is on disk, not only the renamed file's bytes.

    A file system that cannot sync a folder (EINVAL) has nothing more to give and is let be;
    any other error (EIO: the disk failing) is raised, as it is for the file's own fsync."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
