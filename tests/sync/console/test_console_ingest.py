"""Ingest: exactly-once storage on SQLite and PostgreSQL, shared subscriptions across
processes, malformed messages counted and skipped (issue 12 acceptance)."""

from __future__ import annotations

import json
import random
import re
import sqlite3

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
    sent = traffic(2_000, 300, seed=11)
    publisher.flush([publisher.envelope(d, s, seq, {"seq": seq}) for d, s, seq in sent])
    wait_for(lambda: count(db_url) >= 2_000, 120, "2,000 messages stored")
    summaries = []
    for proc in (one, two):
        err = proc.stop()
        line = [x for x in err.splitlines() if "received" in x][-1]
        summaries.append({k: int(v) for k, v in re.findall(r"(\w+) (\d+)", line)})
    assert count(db_url) == 2_000
    assert duplicate_keys(db_url) == 0
    # the broker split the traffic: both processes stored part of it, together all of it once
    assert all(s["stored"] > 0 for s in summaries), summaries
    assert sum(s["received"] for s in summaries) == len(sent)
    assert sum(s["stored"] for s in summaries) == 2_000
    assert sum(s["duplicates"] for s in summaries) == 300
    assert json.loads(json.dumps(summaries))  # the summary line is machine-readable


def refuse_poison(db: str) -> None:
    """A rule the database itself enforces (as an administrator might add): no payload
    mentioning "poison". The console cannot know it; the database refuses that one row."""
    store = open_store(db)
    with store.transaction() as cur:
        if store.dialect.name == "sqlite":
            cur.execute("CREATE TRIGGER no_poison BEFORE INSERT ON messages"
                        " WHEN NEW.payload LIKE '%poison%'"
                        " BEGIN SELECT RAISE(ABORT, 'no poison here'); END")
        else:
            cur.execute("ALTER TABLE messages ADD CONSTRAINT no_poison"
                        " CHECK (payload NOT LIKE '%poison%')")
    store.close()


def test_one_bad_message_never_stalls_the_rest(broker, publisher, db_url):
    """Messages a database cannot store are counted and skipped, and the good messages of
    their batch are stored and acknowledged: with Receive Maximum 20, anything left
    unacknowledged would stop the broker sending after 20 messages."""
    refuse_poison(db_url)
    store = open_store(db_url)
    ingest = Ingest(SyncConfig(broker=broker.url), store, receive_max=20).start()
    envelope = ('{"id":"%s","device":"cam-01","stream":"detections","seq":%d,"ts":1.7e9,'
                '"payload":{}}')
    malformed = [
        ("edge/default/cam-01/detections", envelope % ("\\ud800x", 1000)),  # SQLite refused it
        ("edge/default/cam-01/detections", envelope % ("a\\u0000", 1001)),  # PostgreSQL did
        ("edge/default/cam-01/ack", '{"id": "c1", "ok": false, "error": "bad\\u0000"}'),
        ("edge/default/cam-01/deployment", '{"id": "r-1", "state": "x", "progress": NaN}'),
    ]
    try:
        infos = [publisher.envelope("cam-01", "detections", i, {"i": i}) for i in range(1, 31)]
        infos += [publisher.raw(t, p.encode()) for t, p in malformed]
        infos.append(publisher.envelope("cam-01", "detections", 31, {"poison": True}))
        infos += [publisher.envelope("cam-01", "detections", i, {"i": i}) for i in range(32, 101)]
        publisher.flush(infos)
        wait_for(lambda: ingest.stats.stored == 99, 60, "the 99 good messages stored")
        wait_for(lambda: ingest.stats.received == 104, 60, "every message handled")
    finally:
        ingest.stop()
        store.close()
    assert ingest.stats.malformed == len(malformed)
    assert ingest.stats.rejected == 1 and "cam-01" in (ingest.stats.last_rejected or "")
    assert count(db_url) == 99
    assert count(db_url, "SELECT COUNT(*) FROM messages WHERE seq = 31") == 0
    assert count(db_url, "SELECT COUNT(*) FROM acks") == 0
    assert count(db_url, "SELECT COUNT(*) FROM rollouts") == 0


def test_a_restarted_sequence_is_stored_and_a_replay_is_not(broker, publisher, db_url):
    """Exactly once per message: re-deliveries (same id) are dropped, but a device whose outbox
    was replaced starts again at seq 1 with new ids, and all of that is stored too."""
    store = open_store(db_url)
    ingest = Ingest(SyncConfig(broker=broker.url), store).start()

    def send(prefix: str, seqs: list[int]) -> None:
        publisher.flush([publisher.envelope("cam-01", "telemetry", seq, {"fps": 25.0},
                                            msg_id=f"{prefix}-{seq}") for seq in seqs])

    try:
        send("old", list(range(1, 201)))
        wait_for(lambda: ingest.stats.stored == 200, 60, "the first run stored")
        send("old", list(range(1, 201, 4)))  # 50 re-deliveries: same ids
        wait_for(lambda: ingest.stats.duplicates == 50, 60, "re-deliveries counted")
        send("new", list(range(1, 151)))  # the outbox was replaced: seq 1 again, new ids
        send("new", list(range(1, 151, 10)))  # and 15 re-deliveries of those
        wait_for(lambda: ingest.stats.stored + ingest.stats.duplicates == 415, 60, "all handled")
    finally:
        ingest.stop()
        store.close()
    assert ingest.stats.stored == 350 and ingest.stats.duplicates == 65
    assert ingest.stats.sequence_restarts == 150
    assert count(db_url) == 350
    new = "SELECT COUNT(*) FROM messages WHERE substr(msg_id, 1, 4) = 'new-'"
    assert count(db_url, new) == 150


def test_qos0_waiting_for_the_database_is_bounded_and_counted(broker, publisher, tmp_path):
    """While the database does not answer, at most qos0_max QoS 0 messages wait in memory;
    the rest are dropped and counted (QoS 1 ones wait at the broker, unacknowledged)."""
    db = str(tmp_path / "console.db")
    store = open_store(db)
    ingest = Ingest(SyncConfig(broker=broker.url), store, qos0_max=50).start()
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the database is busy: the writer waits on it
        publisher.flush([publisher.envelope("cam-01", "detections", 1, {})])
        wait_for(lambda: ingest.stats.received == 1, 60, "the writer to hold one message")
        for seq in range(2, 202):
            publisher.envelope("cam-01", "detections", seq, {}, qos=0)
        wait_for(lambda: ingest.stats.dropped_qos0 == 150, 60, "150 QoS 0 messages dropped")
        lock.execute("COMMIT")
        wait_for(lambda: ingest.stats.stored == 51, 60, "the 50 queued and the first stored")
    finally:
        lock.close()
        ingest.stop()
        store.close()
    assert ingest.stats.dropped_qos0 == 150 and count(db) == 51
