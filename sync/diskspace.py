"""Disk-full handling for the outbox: a reserve file that is given up so delivery can drain.

Why: on a full disk SQLite cannot even *delete*: in WAL mode a delete appends pages to the
WAL, and checkpointing copies pages into the database file. Without room, acknowledged rows
can never be removed and journalled records never committed, so nothing drains even when the
broker is back. The outbox therefore keeps ``<outbox>.reserve``, a file of preallocated bytes
(1/16 of the filesystem, between 32 KiB and 4 MiB). Rule:

- The first disk-full error (journal write, commit or delete) releases the reserve and puts
  the outbox in *disk-full mode*, logged once as an ERROR with the cause.
- In disk-full mode ``publish()`` raises ``OutboxError`` without writing (the freed room is for
  draining), while the sender keeps delivering and deleting: journalled records fit into the
  reserve's room because at most half a reserve is ever waiting outside SQLite.
- The outbox leaves disk-full mode (logged once) when it has shrunk its files (incremental
  vacuum, WAL truncation, committed journals deleted) and could preallocate its reserve again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

MIN_RESERVE = 32 * 1024
MAX_RESERVE = 4 * 1024 * 1024
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" from the OS or SQLite ("database or disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        return code == _SQLITE_FULL or "database or disk is full" in str(exc)
    return False


def default_reserve(directory: Path) -> int:
    """1/16 of the filesystem holding ``directory``, clamped to 32 KiB .. 4 MiB."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return MAX_RESERVE
    return max(MIN_RESERVE, min(MAX_RESERVE, st.f_blocks * st.f_frsize // 16))


class Reserve:
    """A file of ``size`` preallocated bytes that can be released and taken back."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def acquire(self) -> bool:
        """Preallocate the reserve; False (and nothing left behind) if there is no room."""
        if self.held:
            return True
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _allocate(fd, self.size)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve's room back to the filesystem; True if it was held."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        block = b"\0" * 65536  # a filesystem without fallocate: write real zeros
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
