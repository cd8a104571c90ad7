"""Versioned schema: numbered SQL files per database, applied once each, in order.

Why not Alembic or yoyo: the console has a handful of tables in two dialects and no ORM; a
numbered file per change (``migrations/<dialect>/NNN_name.sql``) and a ``schema_version``
table say everything, read as plain SQL in review, and add no dependency to the install.
Concurrent starts (two ingest processes) are serialised by the database itself: SQLite's
``BEGIN IMMEDIATE`` write lock, PostgreSQL's transaction-scoped advisory lock.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources

from sync.errors import ConfigError

_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")  # fullmatch: "$" lets a final "\n" through
VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The dialect's migrations in version order; a gap or a duplicate number is a bug."""
    folder = resources.files("sync.console") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ConfigError(f"migrations/{dialect} must be numbered 001, 002, ... without gaps")
    return found


def newest(dialect: str) -> int:
    return len(migrations(dialect))


def pending(applied: set[int], dialect: str) -> list[Migration]:
    return [m for m in migrations(dialect) if m.version not in applied]


def stamp(version: int, name: str) -> tuple[int, str, float]:
    return (version, name, time.time())
