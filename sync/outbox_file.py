"""The outbox's SQLite file: created whole, opened only if it is ours and intact.

A queue that silently starts over loses everything it held and restarts ``seq`` at 1; a queue
that adopts another program's database corrupts that program's data. So (issue 10.3):

- **No file**: a fresh outbox is built under a temporary name and renamed into place. A file
  at the path is therefore always a complete outbox; a crash during creation leaves only the
  temporary file, which the next creation removes.
- **Our file, intact** (``application_id`` ``EDOB``, or a version-1 outbox with its ``meta``
  row, with every table): opened.
- **Another program's SQLite database** (another ``application_id``, or tables that are not
  ours): always refused. It is never modified, moved or quarantined.
- **Written by a newer version** (higher schema): refused.
- **Damaged**: anything else at the path - 0 bytes, not SQLite, unreadable, one of our tables
  missing. Refused by default with a message that says what is wrong. With
  ``on_damaged="quarantine"`` (what ``edge-run`` uses: the camera must keep running) the file
  is renamed to ``NAME.damaged-<UTC time>`` (its ``-wal`` too), an ERROR is logged, and a fresh
  outbox takes its place; the outbox reports the quarantine (``Outbox.quarantined``, and the
  device's status and telemetry). Journal files beside it are replayed into the fresh outbox,
  so what was journalled but not yet committed still goes out; sequence numbers restart
  after the highest journalled one (a consumer sees an outbox reset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from sync.errors import OutboxError

log = logging.getLogger("sync.outbox")

APPLICATION_ID = 0x45444F42  # "EDOB" in the SQLite header: this file is an edge outbox
SCHEMA_VERSION = 1
TABLES = frozenset({"messages", "streams", "dropped", "meta"})
ON_DAMAGED = ("refuse", "quarantine")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check(path: Path) -> str | None:
    """Why the existing file at ``path`` is damaged, or None if it is an intact outbox.

    Raises ``OutboxError`` for files that must never be touched (another program's database,
    a newer schema). Only reads: nothing is written to the file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise OutboxError(f"cannot open outbox {path}: {exc.strerror or exc}") from None
    if size == 0:
        return "it is empty (0 bytes)"
    if head != _SQLITE_MAGIC:
        return "it is not an SQLite database"
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        return f"it cannot be read ({exc})"
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")
        }
        version = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = row[0] if row else None
    except sqlite3.Error as exc:
        return f"it cannot be read ({exc})"
    finally:
        conn.close()
    ours = app_id == APPLICATION_ID or (app_id == 0 and version is not None)
    if not ours:
        if app_id == 0 and not tables:
            return "it is an SQLite database without tables"
        listed = ", ".join(sorted(tables)) or "none"
        raise OutboxError(
            f"cannot open outbox {path}: it is another program's SQLite database (tables: "
            f"{listed}); it is left untouched: give the outbox a path of its own"
        )
    if version is not None and str(version).isdigit() and int(version) > SCHEMA_VERSION:
        raise OutboxError(
            f"cannot open outbox {path}: it was written by a newer version (schema {version}, "
            f"this version reads {SCHEMA_VERSION})"
        )
    missing = sorted(TABLES - tables)
    if missing:
        return (f"table {missing[0]} is missing" if len(missing) == 1
                else f"tables {', '.join(missing)} are missing")  # fmt: skip
    if str(version) != str(SCHEMA_VERSION):
        return f"its schema record is {version!r}"
    return None


def create(path: Path, schema: str) -> None:
    """Build a fresh outbox beside ``path`` and rename it into place (all or nothing)."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # lets a drained outbox shrink
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(schema)
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    from edge_sdk.durable import fsync_dir  # here: edge_sdk's import costs `tail`/`send` ~0.7 s

    fsync_dir(path.parent)


def adopt(conn: sqlite3.Connection) -> None:
    """Mark a version-1 outbox (made before the application id existed) as ours."""
    if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def quarantine(path: Path, reason: str) -> Path:
    """Move a damaged outbox (and its WAL) aside under a timestamped name; returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        os.replace(path, dest)
        wal = Path(f"{path}-wal")
        if wal.exists():
            os.replace(wal, Path(f"{dest}-wal"))
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}-shm").unlink()
        from edge_sdk.durable import fsync_dir

        fsync_dir(path.parent)
    except OSError as exc:
        raise OutboxError(
            f"cannot open outbox {path}: {reason}, and it cannot be moved aside: "
            f"{exc.strerror or exc}"
        ) from None
    log.error(
        "outbox %s is damaged (%s): moved it to %s and started a fresh outbox; the messages "
        "it held are not sent from here", path, reason, dest,
    )
    return dest
