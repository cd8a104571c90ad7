"""The console's database: SQLite (a file, the default) or PostgreSQL (psycopg 3).

One ``Store`` class speaks to both through a ``Dialect`` entry (connect, placeholder, the
max/min functions, how a migration takes its lock); SQL is written once with ``?``
placeholders. Exactly-once storage is the database's job: ``messages`` has the primary key
(device, stream, seq, msg_id) and every insert is ``ON CONFLICT DO NOTHING``, so a QoS 1
re-delivery, or the same message reaching two ingest processes, is stored once whichever
commits first. A message whose (device, stream, seq) is taken by another id is a device whose
sequence restarted (its outbox was replaced): it is stored too, and counted.
A ``Store`` is safe to share between threads (one connection behind a lock).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sync.console import migrate
from sync.console.records import AckRow, MessageRow, RolloutRow, StatusRow, sources_down
from sync.errors import ConfigError, SyncError

TELEMETRY = "telemetry"


class StoreError(SyncError):
    """The database cannot be reached or refused a statement; the message says which."""


class StoreRejected(StoreError):
    """The database refused what a batch holds (a value, a constraint), not the connection:
    writing the same batch again would fail again."""


@dataclass(frozen=True)
class WriteResult:
    inserted: int = 0  # new messages
    restarts: int = 0  # of those, how many reused a (device, stream, seq) of another id


@dataclass(frozen=True)
class Dialect:
    name: str
    connect: Callable[[str], Any]
    errors: tuple[type[BaseException], ...]
    greatest: str
    least: str
    lock_sql: str  # run first inside the migration transaction
    # What one row's values can cause (a value it cannot store, a constraint): the ingest then
    # writes the batch one message at a time and skips the refused one. Every other error
    # (the connection, locks, a full disk, a broken schema, corruption) is retried as it is:
    # nothing is acknowledged, so nothing is lost while it lasts.
    rejected: tuple[type[BaseException], ...] = ()


def _sqlite_connect(url: str) -> sqlite3.Connection:
    path = _sqlite_path(url)
    if path != ":memory:" and not Path(path).parent.is_dir():
        raise ConfigError(f"database folder {Path(path).parent} does not exist; create it first")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the ingest
    conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; WAL stays consistent
    conn.execute("PRAGMA busy_timeout=30000")  # a second ingest process waits, not fails
    return conn


def _sqlite_path(url: str) -> str:
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"{url!r}: write sqlite:///relative.db or sqlite:////abs/path.db")
        return rest[1:]
    return url


def _pg_connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs psycopg: pip install 'edge-ai-toolkit[console]'"
        ) from None
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        try:  # a mistyped URL (e.g. "[::1/db") makes urlsplit raise too
            where = urlsplit(url)._replace(netloc=urlsplit(url).hostname or "").geturl()
        except ValueError:
            where = "the --db URL"
        first = _redact(_first_line(exc), url)  # libpq may quote the whole URI
        raise StoreError(f"cannot connect to PostgreSQL at {where}: {first}") from None


def _redact(text: str, url: str) -> str:
    """``text`` without the URL's password (as typed or percent-decoded): error messages are
    printed and logged, and libpq quotes the URI or the token it could not parse."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    creds = rest.rsplit("@", 1)[0] if "@" in rest else ""
    password = creds.split(":", 1)[1] if ":" in creds else ""
    for secret in sorted({password, unquote(password)} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _pg_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def _pg_rejected() -> tuple[type[BaseException], ...]:
    """A value (e.g. NUL in text), a constraint, a trigger's RAISE EXCEPTION on one row, or a
    row over a limit (a key too long for a btree index: ProgramLimitExceeded, class 54)."""
    try:
        import psycopg
        from psycopg import errors
    except ImportError:
        return ()
    return (psycopg.DataError, psycopg.IntegrityError, errors.RaiseException,
            errors.ProgramLimitExceeded)


DIALECTS: dict[str, Callable[[], Dialect]] = {
    # (sqlite3 refuses a lone surrogate with UnicodeEncodeError, a ValueError: see write)
    "sqlite": lambda: Dialect("sqlite", _sqlite_connect, (sqlite3.Error,), "max", "min",
                              "SELECT 1", (sqlite3.IntegrityError, sqlite3.DataError,
                                           sqlite3.InterfaceError)),  # fmt: skip
    "postgresql": lambda: Dialect("postgresql", _pg_connect, _pg_errors(), "GREATEST", "LEAST",
                                  "SELECT pg_advisory_xact_lock(716002)",
                                  _pg_rejected()),  # fmt: skip
}


def dialect_of(url: str) -> str:
    """``postgresql://`` / ``postgres://`` is PostgreSQL; ``sqlite:///x.db`` or a path is SQLite."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme in ("", "sqlite"):
        if not url:
            raise ConfigError("--db is empty: give a file (console.db) or postgresql://...")
        return "sqlite"
    raise ConfigError(
        f"unknown database URL scheme {scheme!r}: use a file path (console.db), "
        "sqlite:///console.db or postgresql://user:pass@host/dbname"
    )


def open_store(url: str, migrate_schema: bool = True) -> Store:
    """Connect and bring the schema up to date (``migrate_schema``), or refuse with one line."""
    dialect = DIALECTS[dialect_of(url)]()
    try:
        store = Store(dialect.connect(url), dialect, url)
        if migrate_schema:
            store.migrate()
        else:
            store.check_schema()
    except dialect.errors as exc:
        if dialect.name == "sqlite" and isinstance(exc, sqlite3.DatabaseError) and (
                "not a database" in str(exc)):  # fmt: skip
            raise StoreError(f"{_sqlite_path(url)} is not a SQLite database: give --db a new "
                             "file name (it is created) or the console's own") from None
        raise StoreError(f"database {dialect.name}: {_redact(_first_line(exc), url)}") from None
    return store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Store:
    """Writes batches from the ingest and answers the dashboard's queries."""

    def __init__(self, conn: Any, dialect: Dialect, url: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.url = url
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def _cursor(self) -> Any:
        """A cursor, reconnecting first if a server restart broke the connection."""
        if getattr(self.conn, "closed", False) or getattr(self.conn, "broken", False):
            with suppress(*self.dialect.errors):
                self.conn.close()
            self.conn = self.dialect.connect(self.url)
        return self.conn.cursor()

    def _sql(self, text: str) -> str:
        return text if self.dialect.name == "sqlite" else text.replace("?", "%s")

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction on the shared connection; rolled back on any error."""
        with self._lock:
            cur = self._cursor()
            try:
                if self.dialect.name == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                yield cur
                if self.dialect.name == "sqlite":
                    cur.execute("COMMIT")
                else:
                    self.conn.commit()
            except BaseException:
                with suppress(*self.dialect.errors):  # a lost connection: the first error counts
                    self.conn.rollback()
                raise
            finally:
                cur.close()

    def query(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._cursor()
            try:
                cur.execute(self._sql(text), tuple(params))
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, row)) for row in cur.fetchall()]
                if self.dialect.name != "sqlite":
                    self.conn.rollback()  # end the read transaction: no idle-in-transaction
                return rows
            except self.dialect.errors as exc:
                with suppress(*self.dialect.errors):
                    self.conn.rollback()
                raise StoreError(f"database {self.dialect.name}: {_first_line(exc)}") from None
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- schema --------------------------------------------------------------------------------

    def applied_versions(self, cur: Any) -> set[int]:
        cur.execute(migrate.VERSION_TABLE)
        cur.execute("SELECT version FROM schema_version")
        return {int(r[0]) for r in cur.fetchall()}

    def migrate(self, upto: int | None = None) -> list[int]:
        """Apply the missing migrations (up to version ``upto``) in one transaction; returns
        the versions applied."""
        with self.transaction() as cur:
            cur.execute(self.dialect.lock_sql)
            todo = [m for m in migrate.pending(self.applied_versions(cur), self.dialect.name)
                    if upto is None or m.version <= upto]
            for m in todo:
                if self.dialect.name == "sqlite":
                    for statement in _statements(m.sql):
                        cur.execute(statement)
                else:
                    cur.execute(m.sql)
                cur.execute(self._sql("INSERT INTO schema_version VALUES (?, ?, ?)"),
                            migrate.stamp(m.version, m.name))  # fmt: skip
        return [m.version for m in todo]

    def check_schema(self) -> None:
        with self.transaction() as cur:
            have = max(self.applied_versions(cur), default=0)
        want = migrate.newest(self.dialect.name)
        if have != want:
            raise StoreError(
                f"database schema is at version {have}, this console needs {want}: "
                "`edge-fleet serve` brings it up to date when it starts"
            )

    def schema_version(self) -> int:
        return int(self.query("SELECT MAX(version) AS v FROM schema_version")[0]["v"] or 0)

    # -- writes from the ingest -----------------------------------------------------------------

    def write(
        self,
        messages: Sequence[MessageRow] = (),
        statuses: Sequence[StatusRow] = (),
        acks: Sequence[AckRow] = (),
        rollouts: Sequence[RolloutRow] = (),
    ) -> WriteResult:
        """Store one batch atomically; returns how many messages were new (not duplicates).

        ``StoreRejected`` if the database refused a value or constraint (the same batch would
        fail again); ``StoreError`` if it could not be reached (worth retrying)."""
        try:
            with self.transaction() as cur:
                result = WriteResult()
                if messages:
                    result = MESSAGE_INSERTS[self.dialect.name](cur, messages)
                    self._latest_telemetry(cur, messages)
                for s in statuses:
                    self._status(cur, s)
                if acks:
                    cur.executemany(self._sql(
                        "INSERT INTO acks (device, cmd_id, name, ok, result, error, ts, received)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                        [(a.device, a.cmd_id, a.name, a.ok, a.result, a.error, a.ts, a.received)
                         for a in acks])  # fmt: skip
                if rollouts:
                    cur.executemany(self._sql(
                        "INSERT INTO rollouts (rollout, device, state, detail, ts)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout, device) DO UPDATE SET"
                        " state = excluded.state, detail = excluded.detail, ts = excluded.ts"
                        " WHERE excluded.ts >= rollouts.ts"),
                        [(r.rollout, r.device, r.state, r.detail, r.ts) for r in rollouts])
                for device in {a.device for a in acks} | {r.device for r in rollouts}:
                    cur.execute(self._sql(
                        "INSERT INTO devices (device) VALUES (?) ON CONFLICT DO NOTHING"),
                        (device,))  # fmt: skip
                return result
        except (*self.dialect.rejected, ValueError, OverflowError) as exc:
            # e.g. sqlite3 cannot encode a lone surrogate (UnicodeEncodeError), PostgreSQL
            # refuses NUL in text (DataError), a constraint an administrator added
            raise StoreRejected(f"database {self.dialect.name} refused it: "
                                f"{type(exc).__name__}: {_first_line(exc)}"[:300]) from None
        except self.dialect.errors as exc:
            raise StoreError(f"database {self.dialect.name}: {_first_line(exc)}") from None

    def _latest_telemetry(self, cur: Any, messages: Sequence[MessageRow]) -> None:
        latest: dict[str, MessageRow] = {}
        for m in messages:
            if m.stream == TELEMETRY and (m.device not in latest or m.ts > latest[m.device].ts):
                latest[m.device] = m
        g, lo = self.dialect.greatest, self.dialect.least
        if latest:
            cur.executemany(self._sql(
                "INSERT INTO devices (device, telemetry_ts, telemetry_json, last_seen,"
                " latency_baseline_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET"
                " telemetry_ts = excluded.telemetry_ts, telemetry_json = excluded.telemetry_json,"
                f" last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen),"
                " latency_baseline_ms = COALESCE("
                f"{lo}(devices.latency_baseline_ms, excluded.latency_baseline_ms),"
                " devices.latency_baseline_ms, excluded.latency_baseline_ms)"
                " WHERE devices.telemetry_ts IS NULL"
                " OR excluded.telemetry_ts >= devices.telemetry_ts"),
                [(m.device, m.ts, m.payload, m.ts,
                  _number(json.loads(m.payload), "latency_p95_ms"))
                 for m in sorted(latest.values(), key=lambda m: m.device)])  # one lock order

    def _status(self, cur: Any, s: StatusRow) -> None:
        g = self.dialect.greatest
        if s.raw is None:  # a heartbeat: only when the device was last heard of
            cur.execute(self._sql(
                "INSERT INTO devices (device, fleet, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (device) DO UPDATE SET"
                f" last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen),"
                " fleet = excluded.fleet"), (s.device, s.fleet, s.ts))  # fmt: skip
            return
        # A Last Will has no ts: it is the newest news whenever it arrives.
        cur.execute(self._sql(
            "INSERT INTO devices (device, fleet, state, model, version, uptime_s, status_ts,"
            " last_seen, status_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET fleet = excluded.fleet, state = excluded.state,"
            " model = COALESCE(excluded.model, devices.model),"
            " version = COALESCE(excluded.version, devices.version),"
            " uptime_s = excluded.uptime_s,"
            " status_ts = COALESCE(excluded.status_ts, devices.status_ts),"
            f" last_seen = {g}(COALESCE(devices.last_seen, 0), COALESCE(excluded.last_seen, 0)),"
            " status_json = excluded.status_json"
            " WHERE excluded.status_ts IS NULL OR devices.status_ts IS NULL"
            " OR excluded.status_ts >= devices.status_ts"),
            (s.device, s.fleet, s.state, s.model, s.version, s.uptime_s, s.ts, s.ts,
             s.raw))  # fmt: skip

    def record_command(self, cmd_id: str, device: str, name: str, args: str, sent: float) -> None:
        with self.transaction() as cur:
            cur.execute(self._sql("INSERT INTO commands VALUES (?, ?, ?, ?, ?)"),
                        (cmd_id, device, name, args, sent))  # fmt: skip

    # -- alerts --------------------------------------------------------------------------------

    def open_alert(self, device: str, rule: str, at: float, value: float | None,
                   threshold: float | None, message: str) -> bool:
        """Open (device, rule) unless it is open already; True if this call opened it."""
        with self.transaction() as cur:
            cur.execute(self._sql(
                "INSERT INTO alerts (device, rule, opened_at, value, threshold, message)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                (device, rule, at, value, threshold, message))  # fmt: skip
            return cur.rowcount == 1

    def resolve_alert(self, device: str, rule: str, at: float) -> bool:
        """Close the open (device, rule) alert; True if there was one."""
        with self.transaction() as cur:
            cur.execute(self._sql(
                "UPDATE alerts SET resolved_at = ? WHERE device = ? AND rule = ?"
                " AND resolved_at IS NULL"), (at, device, rule))  # fmt: skip
            return cur.rowcount > 0

    def open_alert_keys(self) -> set[tuple[str, str]]:
        rows = self.query("SELECT device, rule FROM alerts WHERE resolved_at IS NULL")
        return {(r["device"], r["rule"]) for r in rows}

    def baselines(self, devices: Sequence[str]) -> dict[str, float | None]:
        """Each device's stored latency baseline, in a few queries however many devices."""
        out: dict[str, float | None] = {}
        for i in range(0, len(devices), 500):
            chunk = list(devices[i:i + 500])
            marks = ", ".join("?" * len(chunk))
            for r in self.query("SELECT device, latency_baseline_ms FROM devices"
                                f" WHERE device IN ({marks})", chunk):  # fmt: skip
                out[r["device"]] = r["latency_baseline_ms"]
        return out

    # -- reads for the dashboard and the API ----------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT d.*, (SELECT COUNT(*) FROM alerts a WHERE a.device = d.device"
            " AND a.resolved_at IS NULL) AS open_alerts FROM devices d ORDER BY d.device")
        return [_device_view(r) for r in rows]

    def device(self, device: str) -> dict[str, Any] | None:
        rows = [r for r in self.devices() if r["device"] == device]
        return rows[0] if rows else None

    def device_state(self, device: str) -> dict[str, Any] | None:
        rows = self.query("SELECT state, last_seen, latency_baseline_ms FROM devices"
                          " WHERE device = ?", (device,))  # fmt: skip
        return rows[0] if rows else None

    def telemetry(self, device: str, since: float = 0, until: float = 1e12,
                  limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` telemetry messages in [since, until], oldest first."""
        rows = self.query(
            "SELECT seq, ts, payload FROM messages WHERE device = ? AND stream = ?"
            " AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
            (device, TELEMETRY, since, until, limit))
        return [{"seq": r["seq"], "ts": r["ts"], **_flat(_stored_json(r["payload"]))}
                for r in reversed(rows)]  # fmt: skip

    def events(self, device: str | None = None, stream: str = "events", since: float = 0,
               limit: int = 100) -> list[dict[str, Any]]:
        where, params = "stream = ? AND ts >= ?", [stream, since]
        if device:
            where, params = where + " AND device = ?", [*params, device]
        rows = self.query(
            f"SELECT device, stream, seq, ts, payload FROM messages WHERE {where}"
            " ORDER BY ts DESC LIMIT ?", (*params, limit))
        return [{**r, "payload": _stored_json(r["payload"])} for r in rows]

    def alerts(self, open_only: bool = False, device: str | None = None,
               limit: int = 200) -> list[dict[str, Any]]:
        where, params = "1 = 1", []
        if open_only:
            where += " AND resolved_at IS NULL"
        if device:
            where, params = where + " AND device = ?", [device]
        return self.query(f"SELECT * FROM alerts WHERE {where} ORDER BY opened_at DESC,"
                          " alert_id DESC LIMIT ?", (*params, limit))  # fmt: skip

    def acks(self, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        where, params = ("WHERE a.device = ?", [device]) if device else ("", [])
        rows = self.query(
            "SELECT a.device, a.cmd_id, a.name, a.ok, a.result, a.error, a.ts, a.received,"
            f" c.sent FROM acks a LEFT JOIN commands c ON c.cmd_id = a.cmd_id {where}"
            " ORDER BY a.received DESC LIMIT ?", (*params, limit))
        for r in rows:
            r["ok"] = bool(r["ok"])
            r["result"] = _stored_json(r["result"]) if r["result"] is not None else None
        return rows

    def rollouts(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT rollout, device, state, detail, ts FROM rollouts"
                          " ORDER BY rollout, device")  # fmt: skip
        return [{**r, "detail": _stored_json(r["detail"]) if r["detail"] else None} for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.query(
            "SELECT (SELECT COUNT(*) FROM messages) AS messages,"
            " (SELECT COUNT(*) FROM devices) AS devices,"
            " (SELECT COUNT(*) FROM alerts WHERE resolved_at IS NULL) AS open_alerts,"
            " (SELECT COUNT(*) FROM acks) AS acks")
        return {k: int(v) for k, v in rows[0].items()}


def _insert_many(cur: Any, messages: Sequence[MessageRow]) -> WriteResult:
    """SQLite: look each (device, stream, seq) up first (the primary key's prefix; the write
    lock is held, so nothing changes meanwhile), then insert what is new."""
    taken: dict[tuple[str, str, int], set[str]] = {}
    new: list[MessageRow] = []
    restarts = 0
    for m in messages:
        key = (m.device, m.stream, m.seq)
        ids = taken.get(key)
        if ids is None:
            cur.execute("SELECT msg_id FROM messages WHERE device = ? AND stream = ? AND seq = ?",
                        key)  # fmt: skip
            ids = taken[key] = {r[0] for r in cur.fetchall()}
        if m.msg_id in ids:
            continue  # a re-delivery
        restarts += bool(ids)
        ids.add(m.msg_id)
        new.append(m)
    cur.executemany(
        "INSERT INTO messages (device, stream, seq, msg_id, ts, received, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(m.device, m.stream, m.seq, m.msg_id, m.ts, m.received, m.payload) for m in new])
    return WriteResult(len(new), restarts)


def _insert_unnest(cur: Any, messages: Sequence[MessageRow]) -> WriteResult:
    """PostgreSQL: the whole batch as one statement over arrays (one round trip, one plan),
    in key order so two processes inserting the same keys take their locks in one order. The
    outer SELECT sees the table as it was before the INSERT (one snapshot for the statement):
    an inserted row with an older row of another id on its (device, stream, seq) is a restart."""
    messages = sorted(messages, key=lambda m: (m.device, m.stream, m.seq, m.msg_id))
    cur.execute(
        "WITH ins AS (INSERT INTO messages (device, stream, seq, msg_id, ts, received, payload)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[],"
        " %s::float8[], %s::float8[], %s::text[]) ON CONFLICT DO NOTHING"
        " RETURNING device, stream, seq, msg_id)"
        " SELECT COUNT(*), COUNT(*) FILTER (WHERE EXISTS (SELECT 1 FROM messages m"
        " WHERE m.device = ins.device AND m.stream = ins.stream AND m.seq = ins.seq"
        " AND m.msg_id <> ins.msg_id)) FROM ins",
        [list(col) for col in zip(*((m.device, m.stream, m.seq, m.msg_id, m.ts, m.received,
                                     m.payload) for m in messages))])  # fmt: skip
    inserted, restarts = cur.fetchone()
    return WriteResult(int(inserted), int(restarts))


MESSAGE_INSERTS: dict[str, Callable[[Any, Sequence[MessageRow]], WriteResult]] = {
    "sqlite": _insert_many,
    "postgresql": _insert_unnest,
}


def _statements(sql: str) -> list[str]:
    """Split a migration file on ';' at line ends (the files keep one statement per ';')."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _stored_json(text: str) -> Any:
    """JSON read back for the API, which cannot send NaN or infinities: a row stored before
    the parsers refused them answers null there instead of failing the whole request."""
    return json.loads(text, parse_constant=lambda name: None)


def finite(v: Any) -> float | None:
    """A reported number as a float; None for anything else, including what no float holds
    (a 400-digit integer is valid JSON; float() of it raises OverflowError) and NaN or
    infinities in rows stored before the parsers refused them: one device's value must not
    fail the fleet table, the live stream or the alerts."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _number(values: Any, key: str) -> float | None:
    return finite(values.get(key)) if isinstance(values, dict) else None


def _flat(values: Any) -> dict[str, Any]:
    """Telemetry as charts want it: numbers at the top level (``drift.brightness_psi`` too)."""
    if not isinstance(values, dict):
        return {}
    out: dict[str, Any] = {}
    for key, v in values.items():
        if isinstance(v, dict):
            for sub, w in v.items():
                if finite(w) is not None:
                    out[f"{key}.{sub}"] = w
        elif finite(v) is not None:
            out[key] = v
    return out


def drift_psi(values: Any) -> float | None:
    """The larger of the reported PSIs (a top-level ``drift_psi`` or the runtime's ``drift``)."""
    if not isinstance(values, dict):
        return None
    found = [_number(values, "drift_psi")]
    drift = values.get("drift")
    if isinstance(drift, dict):
        found += [_number(drift, "brightness_psi"), _number(drift, "confidence_psi")]
    nums = [v for v in found if v is not None]
    return max(nums) if nums else None


def _device_view(r: dict[str, Any]) -> dict[str, Any]:
    tel = _stored_json(r["telemetry_json"]) if r.get("telemetry_json") else {}
    if not isinstance(tel, dict):
        tel = {}
    return {
        "device": r["device"], "fleet": r["fleet"], "state": r["state"] or "unknown",
        "model": r["model"], "version": r["version"], "last_seen": r["last_seen"],
        "uptime_s": r["uptime_s"], "telemetry_ts": r["telemetry_ts"],
        "fps": _number(tel, "fps"), "latency_p95_ms": _number(tel, "latency_p95_ms"),
        "latency_baseline_ms": r["latency_baseline_ms"], "drift_psi": drift_psi(tel),
        "outbox_depth": _number(tel, "outbox_depth"), "dropped": _number(tel, "drops"),
        "sources_down": sources_down(tel) or [],  # [] also when the device never said
        "open_alerts": int(r["open_alerts"]),
    }  # fmt: skip
