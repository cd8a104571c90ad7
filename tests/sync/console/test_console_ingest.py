"""Ingest: exactly-once storage on SQLite and PostgreSQL, shared subscriptions across
processes, malformed messages counted and skipped (issue 12 acceptance)."""

from __future__ import annotations

import json
import random
import re

from consoletest_helpers import count
from synctest_broker import wait_for

from sync.config import SyncConfig
from sync.console.ingest import Ingest
from sync.console.store import open_store

DEVICES = [f"cam-{i:02d}" for i in range(10)]
STREAMS = ["detections", "events", "telemetry"]


def traffic(n: int, duplicates: int, seed: int = 7) -> list[tuple[str, str, int]]:
    """n unique (device, stream, seq) plus `duplicates` re-sends of random earlier ones, in a
    shuffled order (QoS 1 re-delivery after a reconnect comes late and out of order)."""
    unique = [(DEVICES[i % 10], STREAMS[(i // 10) % 3], i // 30 + 1) for i in range(n)]
    rng = random.Random(seed)
    sent = unique + [rng.choice(unique) for _ in range(duplicates)]
    rng.shuffle(sent)
    return sent


def duplicate_keys(db: str) -> int:
    return count(db, "SELECT COUNT(*) FROM (SELECT device, stream, seq FROM messages "
                     "GROUP BY device, stream, seq HAVING COUNT(*) > 1) AS d")


def test_ten_thousand_messages_with_duplicates_are_stored_once(broker, publisher, db_url):
    store = open_store(db_url)
    ingest = Ingest(SyncConfig(broker=broker.url), store, share="console").start()
    try:
        sent = traffic(10_000, 1_500)
        infos = [publisher.envelope(d, s, seq, {"n": seq, "fps": 25.0}) for d, s, seq in sent]
        publisher.flush(infos)
        wait_for(lambda: ingest.stats.received >= len(sent), 120, "ingest to receive all")
        wait_for(lambda: ingest.stats.stored + ingest.stats.duplicates >= len(sent), 60,
                 "the last batch to commit")
    finally:
        ingest.stop()
        store.close()
    assert count(db_url) == 10_000
    assert duplicate_keys(db_url) == 0
    assert ingest.stats.stored == 10_000
    assert ingest.stats.duplicates == 1_500
    assert ingest.stats.malformed == 0
    assert count(db_url, "SELECT COUNT(*) FROM devices") == len(DEVICES)


def test_malformed_messages_are_counted_and_skipped(broker, publisher, tmp_path):
    db = str(tmp_path / "console.db")
    store = open_store(db)
    ingest = Ingest(SyncConfig(broker=broker.url), store).start()
    bad = [
        ("edge/default/cam-01/detections", b"not json"),
        ("edge/default/cam-01/detections", b"[1, 2]"),
        ("edge/default/cam-01/detections",
         b'{"id":"x","device":"cam-01","stream":"detections","seq":"7","ts":1,"payload":{}}'),
        ("edge/default/cam-01/detections",  # claims to be another device
         b'{"id":"x","device":"cam-02","stream":"detections","seq":1,"ts":1,"payload":{}}'),
        ("edge/default/cam-01/detections",
         b'{"id":"x","device":"cam-01","stream":"detections","seq":1,"ts":1e300,"payload":{}}'),
        ("edge/default/cam-01/ack", b'{"id": {"nested": 1}, "ok": true}'),
        ("edge/default/cam-01/status", b'{"state": 5}'),
        ("edge/default/cam-01/detections", b"\xff\xfe" * 1000),
    ]
    try:
        infos = [publisher.raw(t, p) for t, p in bad]
        infos += [publisher.envelope("cam-01", "detections", i, {"i": i}) for i in range(1, 51)]
        publisher.flush(infos)
        wait_for(lambda: ingest.stats.received >= len(bad) + 50, 60, "all messages")
        wait_for(lambda: count(db) == 50, 30, "the good messages to be stored")
    finally:
        ingest.stop()
        store.close()
    assert ingest.stats.malformed == len(bad)
    assert ingest.stats.stored == 50
    assert "cam-01" in (ingest.stats.last_malformed or "")


def test_two_ingest_processes_on_one_shared_subscription_store_everything_once(
        broker, publisher, serve_factory, db_url):
    one = serve_factory(db_url, "--share", "workers", web=False)
    two = serve_factory(db_url, "--share", "workers", web=False)
    sent = traffic(4_000, 600, seed=11)
    publisher.flush([publisher.envelope(d, s, seq, {"seq": seq}) for d, s, seq in sent])
    wait_for(lambda: count(db_url) >= 4_000, 120, "4,000 messages stored")
    summaries = []
    for proc in (one, two):
        err = proc.stop()
        line = [x for x in err.splitlines() if "received" in x][-1]
        summaries.append({k: int(v) for k, v in re.findall(r"(\w+) (\d+)", line)})
    assert count(db_url) == 4_000
    assert duplicate_keys(db_url) == 0
    # the broker split the traffic: both processes stored part of it, together all of it once
    assert all(s["stored"] > 0 for s in summaries), summaries
    assert sum(s["received"] for s in summaries) == len(sent)
    assert sum(s["stored"] for s in summaries) == 4_000
    assert sum(s["duplicates"] for s in summaries) == 600
    assert json.loads(json.dumps(summaries))  # the summary line is machine-readable
