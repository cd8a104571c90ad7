"""Faults never lose what the broker handed the console: a database that goes away and comes
back, and an ingest process killed outright, still end with every message stored once."""

from __future__ import annotations

import signal
import sqlite3

from consoletest_helpers import count
from synctest_broker import wait_for

from sync.config import SyncConfig
from sync.console.ingest import Ingest
from sync.console.store import open_store


def test_postgresql_restart_mid_ingest_loses_nothing(broker, publisher, pg_server):
    """The session's server is stopped abruptly and started again (same data, same port)."""
    url = pg_server.create_database()
    store = open_store(url)
    ingest = Ingest(SyncConfig(broker=broker.url), store).start()
    halted = False
    try:
        publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                         for i in range(1, 301)])
        wait_for(lambda: ingest.stats.stored == 300, 60, "the first 300 stored")
        pg_server.halt()
        halted = True
        publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                         for i in range(301, 601)])
        wait_for(lambda: ingest.stats.db_errors > 0, 60, "the ingest to notice")
        pg_server.resume()
        halted = False
        wait_for(lambda: ingest.stats.stored == 600, 90, "the rest stored after restart")
    finally:
        if halted:
            pg_server.resume()  # the other tests of the session use this server
        ingest.stop()
        store.close()
    assert count(url) == 600
    assert ingest.stats.malformed == 0 and ingest.stats.rejected == 0


def test_killed_ingest_with_a_session_loses_nothing(broker, publisher, serve_factory, tmp_path):
    db = str(tmp_path / "console.db")
    args = ("--session", "console-a", "--no-share")
    first = serve_factory(db, *args, web=False)
    publisher.flush([publisher.envelope(f"cam-{i % 4}", "detections", i // 4 + 1, {"i": i})
                     for i in range(1000)])
    wait_for(lambda: count(db) == 1000, 60, "the first 1,000 stored")
    # The database is held busy, so whatever the broker hands the ingest now stays in its
    # memory, unacknowledged, until the kill: nothing of the second half can be stored by it.
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    publisher.flush([publisher.envelope(f"cam-{i % 4}", "detections", i // 4 + 1, {"i": i})
                     for i in range(1000, 2000)])
    first.proc.send_signal(signal.SIGKILL)  # no flush, no goodbye
    first.proc.wait(30)
    lock.execute("ROLLBACK")
    lock.close()
    assert count(db) == 1000
    serve_factory(db, *args, web=False)  # same session: the broker re-sends what was unacked
    wait_for(lambda: count(db) == 2000, 120, "all 2,000 stored after the restart")
