"""Faults never lose what the broker handed the console: a database that goes away and comes
back, and an ingest process killed outright, still end with every message stored once."""

from __future__ import annotations

import signal

from consoletest_helpers import count
from consoletest_pg import PgServer, pg_bindir
from synctest_broker import wait_for

from sync.config import SyncConfig
from sync.console.ingest import Ingest
from sync.console.store import open_store


def test_postgresql_restart_mid_ingest_loses_nothing(broker, publisher, pg_server):
    server = PgServer(pg_bindir()).start()  # our own server: this test stops it
    try:
        url = server.create_database()
        store = open_store(url)
        ingest = Ingest(SyncConfig(broker=broker.url), store).start()
        try:
            publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                             for i in range(1, 501)])
            wait_for(lambda: ingest.stats.stored == 500, 60, "the first 500 stored")
            server.halt()
            publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                             for i in range(501, 1001)])
            wait_for(lambda: ingest.stats.db_errors > 0, 60, "the ingest to notice")
            server.resume()
            wait_for(lambda: ingest.stats.stored == 1000, 90, "the rest stored after restart")
        finally:
            ingest.stop()
            store.close()
        assert count(url) == 1000
        assert ingest.stats.malformed == 0
    finally:
        server.stop()


def test_killed_ingest_with_a_session_loses_nothing(broker, publisher, serve_factory, tmp_path):
    db = str(tmp_path / "console.db")
    args = ("--session", "console-a", "--no-share")
    first = serve_factory(db, *args, web=False)
    infos = [publisher.envelope(f"cam-{i % 4}", "detections", i // 4 + 1, {"i": i})
             for i in range(6000)]
    wait_for(lambda: count(db) > 500, 60, "ingest under way")
    first.proc.send_signal(signal.SIGKILL)  # no flush, no goodbye
    first.proc.wait(30)
    publisher.flush(infos)
    stored_before_restart = count(db)
    assert stored_before_restart < 6000  # the kill really interrupted the ingest
    serve_factory(db, *args, web=False)  # same session: the broker re-sends what was unacked
    wait_for(lambda: count(db) == 6000, 120, "all 6,000 stored after the restart")
