"""The durable outbox: a journal that ``publish()`` appends to, drained into SQLite (WAL).

Why SQLite: it ships with Python, survives a killed process without a recovery step of ours,
and gives ordered reads and "lowest priority, oldest first" eviction with one index. Why the
journal in front of it: see ``sync/journal.py`` (one ``write()`` per message instead of one
SQLite commit, 2-3x cheaper right after an inference call).

Guarantee: ``append`` returns after its record was written to the journal file (one
``write()``, no fsync), so it survives the process being killed (SIGKILL, crash, OOM); the
next open replays the journal. Without ``fsync`` the last messages may be lost if the machine
loses power; ``fsync=True`` fsyncs every append (journal) and commit (SQLite
``synchronous=FULL``), which costs milliseconds per message on SD cards. A message leaves the
store only after the broker acknowledged it (``remove``) or when the size bound forces an
eviction, which is counted.

Records reach SQLite (and so ``read_after``) on ``flush()`` - the sender calls it whenever it
has room to send - or at the latest after ``ingest_interval``; offline, a batch a second keeps
the SQLite work (and the CPU it takes from inference) small. At most half a disk reserve of
record bytes waits outside SQLite, and a journal file is deleted once it is past half a reserve
and committed, so a full disk never strands records in the journal (``sync/diskspace.py``).

Which files are accepted as an outbox, and what happens to a damaged one:
``sync/outbox_file.py``. The journal's frame format and recovery: ``sync/journal.py``.
Locks: ``_db_lock`` (SQLite writes) is always taken before ``_lock`` (journal, counters);
counters change under both, together with the rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sync import outbox_file
from sync.diskspace import Reserve, default_reserve, is_disk_full
from sync.errors import OutboxError, PayloadError
from sync.journal import Journal, Record, journal_files, scan

try:  # advisory lock: two processes appending to one outbox would reuse sequence numbers
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sync.outbox")

_CHUNK = 500  # bound on SQL parameters per statement (old SQLite allows 999)
_FULL_CHUNK = 16  # rows deleted per transaction on a full disk (each needs WAL room)
_ROTATE_BYTES = 4 * 1024 * 1024  # start a new journal file past this size
_MAX_PENDING = 20_000  # records not yet in SQLite before append() ingests them itself

_SCHEMA = """
CREATE TABLE messages (
    -- AUTOINCREMENT: a plain rowid restarts at 1 when the table empties, which would put
    -- a new message behind the sender's cursor
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX messages_evict ON messages(priority, id);
-- highest sequence number that has left the messages table, per stream, so numbering
-- continues after a restart even when everything was delivered
CREATE TABLE streams (stream TEXT PRIMARY KEY, high INTEGER NOT NULL);
CREATE TABLE dropped (priority INTEGER PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredMessage:
    """One row waiting for delivery; ``body`` is the exact bytes to put on the wire."""

    rowid: int
    stream: str
    seq: int
    body: bytes


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    max_bytes: int
    accepted: int  # appended by this process since open
    dropped: dict[int, int] = field(default_factory=dict)  # priority -> evicted/refused, ever
    disk_full: bool = False  # publish() refuses messages until there is room again
    quarantined: str | None = None  # where a damaged outbox file was moved at open

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class Outbox:
    """Ordered, size-bounded, crash-safe message store shared by the caller and the sender."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        fsync: bool = False,
        ingest_interval: float = 1.0,
        *,
        on_damaged: str = "refuse",
        reserve_bytes: int | None = None,
    ) -> None:
        """``on_damaged``: "refuse" (raise) or "quarantine" (move aside, start fresh) for a
        damaged outbox file; ``reserve_bytes``: the disk-full reserve (default: 1/16 of the
        filesystem, 32 KiB .. 4 MiB)."""
        if on_damaged not in outbox_file.ON_DAMAGED:
            raise OutboxError(f"on_damaged must be 'refuse' or 'quarantine', not {on_damaged!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.quarantined: str | None = None
        self._db_lock = threading.Lock()  # the SQLite write connection
        self._lock = threading.Lock()  # journal, pending records, counters
        self._read_lock = threading.Lock()
        try:  # a read-only card, a file where the folder should be: one line, not a traceback
            self._lockfile = self._acquire_file_lock()
        except OSError as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None
        size = reserve_bytes or default_reserve(self.path.parent)
        self._reserve = Reserve(Path(f"{self.path}.reserve"), size)
        try:
            self._reserve.release()  # room to create or replay; taken back once open
            self._open_file(on_damaged)
            self._pending_limit = size // 2  # record bytes allowed to wait outside SQLite
            self._rotate_bytes = min(_ROTATE_BYTES, size // 2)
            self._conn = self._connect(fsync, checkpoint_pages=max(4, size // 4 // 4096))
            self._reader = self._connect(fsync)
            outbox_file.adopt(self._conn)
            self._replay_journals()
            self._load_counters()
            self._journal = Journal(self.path, fsync)
        except BaseException as exc:
            self._release_file_lock()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None
            raise
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._retired: list[Path] = []  # rotated journals, deleted once their records commit
        self._closed = False
        self.disk_full = False
        self._last_failure = ""
        if not self._reserve.acquire():
            with self._db_lock:
                self._make_room(shrink=True)  # a drained outbox may hold much free space
            if not self._reserve.acquire():
                self._enter_disk_full("no room for the outbox's disk reserve")
        self.accepted = 0
        self._stop = threading.Event()
        self._ingest_interval = ingest_interval
        self._ingester = threading.Thread(
            target=self._ingest_main, name=f"outbox-ingest-{self.path.name}", daemon=True
        )
        self._ingester.start()

    # -- opening ---------------------------------------------------------------------------

    def _acquire_file_lock(self) -> int | None:
        if fcntl is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(
                f"outbox {self.path} is in use by another process; give each MqttSync its "
                "own outbox file"
            ) from None
        return fd

    def _release_file_lock(self) -> None:
        if self._lockfile is not None:
            os.close(self._lockfile)  # closing the fd releases the flock
            self._lockfile = None

    def _open_file(self, on_damaged: str) -> None:
        """Create the outbox, or check the existing file (rules: ``sync/outbox_file.py``)."""
        if self.path.exists():
            damage = outbox_file.check(self.path)
            if damage is None:
                return
            if on_damaged == "refuse":
                raise OutboxError(
                    f"cannot open outbox {self.path}: {damage}. Nothing was changed: move it "
                    "aside to start a fresh outbox (or set outbox_damaged = quarantine)"
                )
            self.quarantined = str(outbox_file.quarantine(self.path, damage))
        outbox_file.create(self.path, _SCHEMA)

    def _connect(self, fsync: bool, checkpoint_pages: int = 0) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {self.path}: WAL mode unavailable (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        # Automatic checkpoints (which fsync) stay on: commits happen in the ingest and
        # sender threads, never on the publish() path.
        conn.execute("PRAGMA journal_size_limit=67108864")
        if checkpoint_pages:  # a WAL larger than the reserve could not be checkpointed
            conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        return conn

    def _replay_journals(self) -> None:
        """Commit what a killed process left in its journal files, then delete them."""
        files = journal_files(self.path)
        if not files:
            return
        c = self._conn
        highs: dict[str, int] = dict(c.execute("SELECT stream, high FROM streams"))
        for stream, top in c.execute("SELECT stream, MAX(seq) FROM messages GROUP BY stream"):
            highs[stream] = max(top, highs.get(stream, 0))
        for path in files:
            # Records are journalled in seq order per stream and ingested in journal order,
            # so anything at or below the stored high-water mark is already in SQLite.
            records, skipped = scan(path.read_bytes())
            if skipped:
                logging.getLogger("sync.outbox").warning(
                    "outbox journal %s: skipped %d bytes of torn or damaged frames (a write cut "
                    "short by a crash or a full disk); the records around them are kept",
                    path, skipped,
                )
            fresh = []
            for rec in records:
                if rec.seq > highs.get(rec.stream, 0):
                    fresh.append(rec)
                    highs[rec.stream] = rec.seq
            self._insert(fresh)
            path.unlink()

    def _insert(self, records: list[Record]) -> int:
        """Commit records in one transaction; returns the rowid of the last one (or 0)."""
        if not records:
            return 0
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO messages (stream, seq, priority, size, body) VALUES (?, ?, ?, ?, ?)",
                [(r.stream, r.seq, r.priority, len(r.body), r.body) for r in records],
            )
            last = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise
        return int(last)

    def _load_counters(self) -> None:
        c = self._conn
        self.depth, self.bytes = c.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
        ).fetchone()
        self.last_rowid = c.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        highs: dict[str, int] = dict(c.execute("SELECT stream, high FROM streams"))
        for stream, top in c.execute("SELECT stream, MAX(seq) FROM messages GROUP BY stream"):
            highs[stream] = max(top, highs.get(stream, 0))
        self._next_seq = {stream: high + 1 for stream, high in highs.items()}
        self._dropped: dict[int, int] = dict(c.execute("SELECT priority, count FROM dropped"))

    # -- the publish path ------------------------------------------------------------------

    def append(
        self, stream: str, priority: int, encode: Callable[[int], bytes]
    ) -> tuple[int, bool]:
        """Store one message; ``encode(seq)`` makes its bytes. Returns (seq, stored).

        ``stored`` is False only when the outbox is full of messages of higher priority:
        the new message is then the one dropped (and counted); its seq is still used up so
        the consumer sees the gap.
        """
        with self._lock:  # fast path: one journal write
            self._check_open()
            seq = self._next_seq.get(stream, 1)
            body = encode(seq)
            size = len(body)
            if size > self.max_bytes:
                raise PayloadError(
                    f"message of {size} bytes is larger than the whole outbox "
                    f"({self.max_bytes} bytes)"
                )
            if (
                self.bytes + size <= self.max_bytes
                and len(self._pending) < _MAX_PENDING
                and self._pending_bytes + size <= self._pending_limit
            ):
                rec = Record(stream, seq, priority, body)
                try:
                    self._journal.write(rec)
                except OSError as exc:
                    if is_disk_full(exc):
                        self._enter_disk_full(str(exc))
                    raise OutboxError(
                        f"outbox {self.path}: cannot store message: {exc}"
                    ) from None
                self._pending.append(rec)
                self._pending_bytes += size
                self._next_seq[stream] = seq + 1
                self.accepted += 1
                self.depth += 1
                self.bytes += size
                return seq, True
        # Slow path (outbox full, or ingestion behind): work in SQLite directly.
        with self._db_lock, self._lock:
            self._check_open()
            try:
                self._ingest_locked()
                seq = self._next_seq.get(stream, 1)
                body = encode(seq)
                size = len(body)
                if self.bytes + size > self.max_bytes:
                    stored = self._append_evicting(stream, seq, priority, size, body)
                else:
                    self.last_rowid = self._insert([Record(stream, seq, priority, body)])
                    self.depth += 1
                    self.bytes += size
                    stored = True
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    self._enter_disk_full(str(exc))
                raise OutboxError(f"outbox {self.path}: cannot store message: {exc}") from None
            self._next_seq[stream] = seq + 1
            self.accepted += 1
        return seq, stored

    def _check_open(self) -> None:
        """Refuse when closed, or (without writing anything) while the disk is full."""
        if self._closed:
            raise OutboxError("outbox is closed")
        if self.disk_full:
            raise OutboxError(
                f"outbox {self.path}: disk full, message refused until there is room again "
                f"({self.depth} accepted messages are kept and still delivered)"
            )

    # -- a full disk (rules: sync/diskspace.py) ---------------------------------------------

    def _enter_disk_full(self, cause: str) -> bool:
        """Release the reserve and refuse new messages; True if room was freed just now."""
        released = self._reserve.release()
        if not self.disk_full:
            self.disk_full = True
            log.error(
                "outbox %s: disk full (%s); released the %d-byte reserve so delivery can "
                "drain; new messages are refused until there is room again",
                self.path, cause, self._reserve.size,
            )
        return released

    def _make_room(self, shrink: bool = False) -> None:
        """Caller holds ``_db_lock``: give disk space back without needing any.

        Retired journals go if nothing waits to be committed (while records wait, they are the
        records' only copy on disk: a commit that failed on the full disk put them back in
        `_pending`), and the WAL is checkpointed and truncated (a checkpoint after deletes
        only rewrites pages the database file already has). ``shrink`` also returns free pages
        to the filesystem, a few at a time, each step's WAL truncated again.
        """
        with self._lock:
            committed = not self._pending
        if committed:
            self._delete_retired()
        c = self._conn
        with contextlib.suppress(sqlite3.Error):
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if not shrink or c.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        while c.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            try:
                c.execute("PRAGMA incremental_vacuum(16)").fetchall()
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                return

    def _try_leave_disk_full(self) -> None:
        """Shrink the files, then take the reserve back: room again means messages again."""
        with self._db_lock:
            if not self.disk_full or self._closed:
                return
            try:
                self._flush_locked()
            except sqlite3.Error:
                self._make_room()
                return
            self._make_room(shrink=True)
            if not self._reserve.acquire():
                return
            with self._lock:
                self.disk_full = False
            log.warning("outbox %s: there is room on the disk again; accepting messages",
                        self.path)

    # -- moving journalled records into SQLite -------------------------------------------

    def _ingest_main(self) -> None:
        while not self._stop.wait(self._ingest_interval):
            try:
                self.flush()
                if self.disk_full:
                    self._try_leave_disk_full()
            except Exception as exc:  # keep the records pending and retry; say it once
                self._note_failure("committing journalled messages", exc)
                self._stop.wait(1.0)

    def _note_failure(self, what: str, exc: BaseException) -> None:
        text = f"outbox {self.path}: {what} failed: {exc}"
        if text != self._last_failure:
            self._last_failure = text
            if isinstance(exc, (OutboxError, sqlite3.Error, OSError)):
                log.error("%s (retrying)", text)
            else:
                log.exception("%s (retrying)", text)

    @property
    def pending(self) -> int:
        """Records journalled but not yet in SQLite (a cheap check before ``flush()``)."""
        return len(self._pending)

    def flush(self) -> None:
        """Commit journalled records to SQLite now (they become visible to ``read_after``).

        ``publish()`` is held up only while the pending list is swapped, not during the commit.
        Raises ``OutboxError`` if they cannot be committed (they stay pending, in order).
        """
        with self._db_lock:
            try:
                self._flush_locked()
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise OutboxError(f"outbox {self.path}: cannot commit: {exc}") from None
                self._enter_disk_full(str(exc))
                self._make_room()
                try:  # again, in the room the reserve and the WAL just gave back
                    self._flush_locked()
                except sqlite3.Error as again:
                    raise OutboxError(f"outbox {self.path}: cannot commit: {again}") from None

    def _flush_locked(self) -> None:
        with self._lock:
            if self._closed or not self._pending:
                return
            batch, self._pending = self._pending, []
            self._pending_bytes = 0
            if self.disk_full or self._journal.size > self._rotate_bytes:
                self._retire_journal()
        try:
            last = self._insert(batch)
        except BaseException:
            with self._lock:  # keep them, in order, for the next attempt
                self._pending = batch + self._pending
                self._pending_bytes = sum(len(r.body) for r in self._pending)
            raise
        self.last_rowid = last
        self._delete_retired()

    def _retire_journal(self) -> None:
        """Caller holds ``_lock``: continue in a new journal file (if one can be created).
        An empty one is kept: flushes failing on a full disk would otherwise leave a new empty
        file behind each second."""
        if not self._journal.size:
            return
        with contextlib.suppress(OSError):  # no room even for an empty file: keep this one
            self._retired.append(self._journal.rotate())

    def _delete_retired(self) -> None:
        """Caller holds ``_db_lock`` and knows every record of the retired journals is
        committed (right after a commit of the whole pending list, or with none pending)."""
        while self._retired:
            with contextlib.suppress(OSError):
                self._retired.pop().unlink()

    def _ingest_locked(self) -> None:
        """Caller holds both locks (slow path, close). Commit pending records."""
        if not self._pending:
            return
        batch = self._pending
        self.last_rowid = self._insert(batch) or self.last_rowid
        self._pending = []
        self._pending_bytes = 0
        if self._journal.size > self._rotate_bytes or self.disk_full:
            self._retire_journal()
        self._delete_retired()

    def _append_evicting(
        self, stream: str, seq: int, priority: int, size: int, body: bytes
    ) -> bool:
        """Make room by dropping the lowest priority, oldest first (the new one included)."""
        need = self.bytes + size - self.max_bytes
        victims: list[tuple[int, str, int, int, int]] = []
        freed = 0
        rows = self._conn.execute(
            "SELECT id, stream, seq, size, priority FROM messages WHERE priority <= ? "
            "ORDER BY priority, id",
            (priority,),
        )
        for row in rows:
            victims.append(row)
            freed += row[3]
            if freed >= need:
                break
        rows.close()
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if freed < need:  # everything stored is more important: drop the newcomer
                self._record_drops(c, {priority: 1}, {stream: seq})
                c.execute("COMMIT")
                self._dropped[priority] = self._dropped.get(priority, 0) + 1
                return False
            ids = [v[0] for v in victims]
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                c.execute(
                    f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk
                )
            highs: dict[str, int] = {}
            drops: dict[int, int] = {}
            for _, s, q, _, p in victims:
                highs[s] = max(q, highs.get(s, 0))
                drops[p] = drops.get(p, 0) + 1
            self._record_drops(c, drops, highs)
            cur = c.execute(
                "INSERT INTO messages (stream, seq, priority, size, body) VALUES (?, ?, ?, ?, ?)",
                (stream, seq, priority, size, body),
            )
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise
        self.last_rowid = cur.lastrowid or self.last_rowid  # after COMMIT: safe to read
        for p, n in drops.items():
            self._dropped[p] = self._dropped.get(p, 0) + n
        self.depth += 1 - len(victims)
        self.bytes += size - freed
        return True

    @staticmethod
    def _record_drops(c: sqlite3.Connection, drops: dict[int, int], highs: dict[str, int]) -> None:
        c.executemany(
            "INSERT INTO dropped VALUES (?, ?) "
            "ON CONFLICT(priority) DO UPDATE SET count = count + excluded.count",
            drops.items(),
        )
        Outbox._record_highs(c, highs)

    @staticmethod
    def _record_highs(c: sqlite3.Connection, highs: dict[str, int]) -> None:
        c.executemany(
            "INSERT INTO streams VALUES (?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET high = max(high, excluded.high)",
            highs.items(),
        )

    # -- the sender side ---------------------------------------------------------------------

    def read_after(self, rowid: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages with a rowid above ``rowid``, oldest first."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, stream, seq, body FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (rowid, limit),
            ).fetchall()
        return [StoredMessage(r[0], r[1], r[2], r[3]) for r in rows]

    def remove(self, rowids: Sequence[int]) -> int:
        """Delete delivered messages (after their PUBACK); returns how many were still there.

        On a full disk (deleting is what makes room, yet in WAL mode it needs room itself) the
        reserve is released, the WAL truncated, and the rows deleted a few at a time with the
        WAL truncated in between; ``OutboxError`` if even that fails.
        """
        if not rowids:
            return 0
        with self._db_lock:
            if self._closed:
                return 0
            try:
                if not self.disk_full:
                    return self._delete(rowids)
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise OutboxError(f"outbox {self.path}: cannot delete: {exc}") from None
                self._enter_disk_full(str(exc))
            removed = 0
            try:
                for i in range(0, len(rowids), _FULL_CHUNK):
                    self._make_room()
                    removed += self._delete(rowids[i : i + _FULL_CHUNK])
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot delete: {exc}") from None
            self._make_room()
        return removed

    def _delete(self, rowids: Sequence[int]) -> int:
        """Caller holds ``_db_lock``. One transaction; the counters change with the rows (under
        the SQLite lock, so the slow path of append() never sees the rows gone but the bytes
        still counted)."""
        removed = 0
        freed = 0
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            highs: dict[str, int] = {}
            for i in range(0, len(rowids), _CHUNK):
                chunk = list(rowids[i : i + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for stream, top, n, size in c.execute(
                    "SELECT stream, MAX(seq), COUNT(*), SUM(size) FROM messages "
                    f"WHERE id IN ({marks}) GROUP BY stream",
                    chunk,
                ):
                    highs[stream] = max(top, highs.get(stream, 0))
                    removed += n
                    freed += size
                c.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
            self._record_highs(c, highs)
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise
        with self._lock:
            self.depth -= removed
            self.bytes -= freed
        return removed

    # -- housekeeping ------------------------------------------------------------------------

    def next_seq(self, stream: str) -> int:
        """The sequence number the next message on ``stream`` will get."""
        with self._lock:
            return self._next_seq.get(stream, 1)

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                self.depth, self.bytes, self.max_bytes, self.accepted, dict(self._dropped),
                self.disk_full, self.quarantined,
            )

    def close(self) -> None:
        """Commit what is pending, delete the journal and close the files."""
        self._stop.set()
        if self._ingester.is_alive() and self._ingester is not threading.current_thread():
            self._ingester.join(timeout=30)
        with self._db_lock, self._lock, self._read_lock:
            if self._closed:
                return
            try:
                self._ingest_locked()
                journal = self._journal.close()
                journal.unlink()
            except (sqlite3.Error, OSError):
                pass  # the journal stays and is replayed on the next open
            self._closed = True
            # A busy checkpoint is harmless: SQLite replays the WAL on the next open.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._reader.close()
            self._conn.close()
            self._release_file_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rollback(c: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: SQLite ends it by itself on some errors
    (a full disk), and "cannot rollback" must not hide the error that matters."""
    if c.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            c.execute("ROLLBACK")
