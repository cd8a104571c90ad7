"""An append-only journal of framed records: the cheap half of the outbox's durability.

``publish()`` must be durable when it returns, yet an SQLite commit per message costs
100-200 us right after a cache-cold inference call. One ``os.write()`` of a framed record into
this journal costs a fraction of that and survives the process being killed (the bytes are in
the kernel's page cache). A background thread then moves records into SQLite in batches and
deletes journal files whose records are all committed there.

(A memory-mapped journal was tried and measured: on ext4 the first store to each 4 KiB page
faults into the filesystem for a few hundred microseconds, more than the ``write()`` calls it
saves.)

Frame: ``<u32 length><u32 crc32>`` then the record ``<i64 seq><i32 priority><u16 len(stream)>
stream body``. A torn or corrupt frame can only be the last one a killed process was writing,
whose ``publish()`` therefore never returned; replay stops there.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<qiH")
_SUFFIX = re.compile(r"\.journal\.(\d+)$")


class Record(NamedTuple):
    """One journalled message (a tuple: built once per publish(), so it must be cheap)."""

    stream: str
    seq: int
    priority: int
    body: bytes


def encode_record(rec: Record) -> bytes:
    name = rec.stream.encode("utf-8")
    payload = _HEAD.pack(rec.seq, rec.priority, len(name)) + name + rec.body
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> Iterator[Record]:
    """Yield the intact records of one journal file, stopping at the first torn frame."""
    data = path.read_bytes()
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        payload = data[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != crc or length < _HEAD.size:
            return
        seq, priority, name_len = _HEAD.unpack_from(payload, 0)
        name_end = _HEAD.size + name_len
        yield Record(payload[_HEAD.size : name_end].decode("utf-8"), seq, priority,
                     payload[name_end:])
        pos = start + length


def _number(path: Path) -> int:
    match = _SUFFIX.search(path.name)
    return int(match.group(1)) if match else -1


def journal_files(base: Path) -> list[Path]:
    """Journal files next to ``base`` (``base.journal.N``), oldest first."""
    found = [p for p in base.parent.glob(base.name + ".journal.*") if _number(p) >= 0]
    return sorted(found, key=_number)


class Journal:
    """The file ``publish()`` appends to; rotated so committed records can be deleted."""

    def __init__(self, base: Path, fsync: bool) -> None:
        self.base = base
        self.fsync = fsync
        numbers = [_number(p) for p in journal_files(base)]
        self.number = max(numbers, default=0)
        self.path = base
        self.size = 0
        self._fd = -1
        self._open_next()

    def _open_next(self) -> None:
        self.number += 1
        self.path = self.base.with_name(f"{self.base.name}.journal.{self.number}")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = 0
        if self.fsync:  # the new file's directory entry must survive power loss too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def write(self, rec: Record) -> None:
        frame = encode_record(rec)
        if self._fd < 0:
            raise OSError("the outbox journal is closed")
        written = os.write(self._fd, frame)
        if written != len(frame):  # regular files only short-write when the disk is full
            raise OSError(28, "short write to the outbox journal (disk full?)")
        if self.fsync:
            os.fsync(self._fd)
        self.size += written

    def rotate(self) -> Path:
        """Start a new file; returns the old one (delete it once its records are committed)."""
        old_fd, old_path = self._fd, self.path
        self._open_next()
        os.close(old_fd)
        return old_path

    def close(self) -> Path:
        os.close(self._fd)
        self._fd = -1
        return self.path
