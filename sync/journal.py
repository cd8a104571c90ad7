"""An append-only journal of framed records: the cheap half of the outbox's durability.

``publish()`` must be durable when it returns, yet an SQLite commit per message costs
100-200 us right after a cache-cold inference call. One ``os.write()`` of a framed record into
this journal costs a fraction of that and survives the process being killed (the bytes are in
the kernel's page cache). A background thread then moves records into SQLite in batches and
deletes journal files whose records are all committed there.

(A memory-mapped journal was tried and measured: on ext4 the first store to each 4 KiB page
faults into the filesystem for a few hundred microseconds, more than the ``write()`` calls it
saves.)

Frame: ``<u32 MAGIC><u32 length><u32 crc32(length, record)>`` then the record ``<i64 seq>
<i32 priority><u16 len(stream)> stream body``. Every frame carries its own length and checksum,
so recovery needs no frame to be the last one:

- A frame that fails its check (a write cut short by a full disk, or by a crash) is skipped:
  the reader searches for the next ``MAGIC`` whose frame checks out and goes on from there.
  Records written *after* a torn frame are therefore never lost (a false match needs the magic
  and a 32-bit checksum to agree by chance).
- The writer also removes its own torn bytes: after a short write it truncates the file back
  to the last whole frame, and if it cannot, it continues in a new file.
- Files written before the magic existed (``<u32 length><u32 crc32>`` frames) are still read,
  up to their first bad frame.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

MAGIC = b"EJR2"  # start of every frame
_FRAME = struct.Struct("<4sII")
_LEGACY_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<qiH")
_LEN = struct.Struct("<I")
_MAX_RECORD = 1 << 30  # a length above this is corruption, not a message
_SUFFIX = re.compile(r"\.journal\.(\d+)\Z")  # \Z: "$" also matches before a final "\n"


class Record(NamedTuple):
    """One journalled message (a tuple: built once per publish(), so it must be cheap)."""

    stream: str
    seq: int
    priority: int
    body: bytes


def encode_record(rec: Record) -> bytes:
    name = rec.stream.encode("utf-8")
    payload = _HEAD.pack(rec.seq, rec.priority, len(name)) + name + rec.body
    length = len(payload)
    return _FRAME.pack(MAGIC, length, zlib.crc32(payload, zlib.crc32(_LEN.pack(length)))) + payload


def _decode(payload: bytes) -> Record | None:
    if len(payload) < _HEAD.size:
        return None
    seq, priority, name_len = _HEAD.unpack_from(payload, 0)
    name_end = _HEAD.size + name_len
    if name_end > len(payload):
        return None
    try:
        stream = payload[_HEAD.size : name_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Record(stream, seq, priority, payload[name_end:])


def _frame_at(data: bytes, pos: int) -> tuple[Record, int] | None:
    """The record of a whole, intact frame starting at ``pos`` and where the next begins."""
    if pos + _FRAME.size > len(data):
        return None
    magic, length, crc = _FRAME.unpack_from(data, pos)
    start = pos + _FRAME.size
    if magic != MAGIC or length > _MAX_RECORD or start + length > len(data):
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(_LEN.pack(length))) != crc:
        return None
    rec = _decode(payload)
    return None if rec is None else (rec, start + length)


def scan(data: bytes) -> tuple[list[Record], int]:
    """Every intact record in ``data``, and how many bytes had to be skipped to find them."""
    if data and not data.startswith(MAGIC):
        legacy = _scan_legacy(data)
        if legacy:
            return legacy, 0
    records: list[Record] = []
    skipped = 0
    pos = 0
    while pos < len(data):
        found = _frame_at(data, pos)
        if found is not None:
            records.append(found[0])
            pos = found[1]
            continue
        nxt = data.find(MAGIC, pos + 1)  # a torn or damaged frame: resynchronise
        end = len(data) if nxt < 0 else nxt
        skipped += end - pos
        pos = end
    return records, skipped


def _scan_legacy(data: bytes) -> list[Record]:
    records: list[Record] = []
    pos = 0
    while pos + _LEGACY_FRAME.size <= len(data):
        length, crc = _LEGACY_FRAME.unpack_from(data, pos)
        start = pos + _LEGACY_FRAME.size
        payload = data[start : start + length]
        rec = _decode(payload) if len(payload) == length and zlib.crc32(payload) == crc else None
        if rec is None:
            break
        records.append(rec)
        pos = start + length
    return records


def read_records(path: Path) -> Iterator[Record]:
    """Yield the intact records of one journal file, skipping torn or damaged frames."""
    yield from scan(path.read_bytes())[0]


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
        number = self.number + 1
        path = self.base.with_name(f"{self.base.name}.journal.{number}")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.number, self.path, self.size = number, path, 0
        if self.fsync:  # the new file's directory entry must survive power loss too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def write(self, rec: Record) -> None:
        """Append one frame, all or nothing: a short write is undone before raising."""
        frame = encode_record(rec)
        if self._fd < 0:
            raise OSError("the outbox journal is closed")
        try:
            written = os.write(self._fd, frame)
        except OSError:
            self._drop_torn_tail()  # some filesystems write part of it and then fail
            raise
        if written != len(frame):  # regular files only short-write when the disk is full
            self._drop_torn_tail()
            raise OSError(28, "short write to the outbox journal (disk full?)")
        if self.fsync:
            os.fsync(self._fd)
        self.size += written

    def _drop_torn_tail(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)
        except OSError:  # cannot cut it off: leave it (readers skip it), write elsewhere
            old = self._fd
            with contextlib.suppress(OSError):
                self._open_next()  # the old file is replayed and deleted on the next open
                os.close(old)

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
