"""Schema migrations and the record parsers at the console's edge."""

from __future__ import annotations

import json

import pytest

from sync.console.records import MessageRow, RolloutRow, StatusRow, parse_message
from sync.console.store import (
    DIALECTS,
    Store,
    StoreError,
    StoreRejected,
    WriteResult,
    dialect_of,
    open_store,
)
from sync.errors import PayloadError


def row(seq: int, msg_id: str, device: str = "cam-1") -> MessageRow:
    return MessageRow(device, "detections", seq, msg_id, 1.7e9 + seq, 1.7e9 + seq, "{}")


def test_migrations_apply_once_and_a_stale_schema_is_refused(db_url):
    with pytest.raises(StoreError, match="schema is at version 0, this console needs 2"):
        open_store(db_url, migrate_schema=False)
    store = open_store(db_url)
    assert store.schema_version() == 2
    assert store.migrate() == []  # nothing left to apply
    store.close()
    again = open_store(db_url, migrate_schema=False)
    assert again.schema_version() == 2
    again.close()


def test_migration_2_keeps_the_rows_and_keys_messages_by_id(db_url):
    """A version-1 database (key: device, stream, seq) with rows in it is brought to version 2
    (key: device, stream, seq, id) without losing them; then a restarted sequence is stored."""
    dialect = DIALECTS[dialect_of(db_url)]()
    store = Store(dialect.connect(db_url), dialect, db_url)
    assert store.migrate(upto=1) == [1]
    with store.transaction() as cur:
        cur.execute(store._sql("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"),
                    ("cam-1", "detections", 1, "old-1", 1.7e9, 1.7e9, '{"v":1}'))
    assert store.migrate() == [2]
    assert store.write([row(1, "old-1")]).inserted == 0  # still there: a duplicate
    assert store.write([row(1, "new-1"), row(2, "new-2")]) == WriteResult(2, 1)
    assert store.query("SELECT msg_id, payload FROM messages WHERE seq = 1 ORDER BY msg_id"
                       ) == [{"msg_id": "new-1", "payload": "{}"},
                             {"msg_id": "old-1", "payload": '{"v":1}'}]
    store.close()


def test_a_value_the_database_refuses_is_a_rejection_not_an_outage(db_url):
    """What a database cannot store (PostgreSQL: NUL in text; SQLite: a lone surrogate) is
    StoreRejected, which the ingest skips one message at a time, not a StoreError it retries
    forever. (parse_message refuses both; this is the store's own line of defence.)"""
    store = open_store(db_url)
    bad = "nul\x00" if store.dialect.name == "postgresql" else "half\ud800"
    with pytest.raises(StoreRejected, match="refused"):
        store.write([row(1, "ok-1"), row(2, bad)])
    assert store.write([row(1, "ok-1")]).inserted == 1  # the connection is fine afterwards
    store.close()


def test_parsers_store_reports_and_ignore_requests():
    deployment = json.dumps({"id": "r-7", "state": "healthy", "progress": 1.0, "ts": 1.7e9})
    row = parse_message("edge/f/cam-1/deployment", deployment.encode(), 1.7e9)
    assert isinstance(row, RolloutRow) and (row.rollout, row.state) == ("r-7", "healthy")
    assert parse_message("edge/f/cam-1/deployment", b'{"id": null, "state": "idle"}') is None
    status = parse_message("edge/f/cam-1/status", b'{"state": "offline", "model": "m"}')
    assert isinstance(status, StatusRow) and status.ts is None  # a Last Will has no ts
    for topic in ("edge/f/cam-1/cmd", "edge/f/cam-1/deploy", "edge/f/@lobby/deploy",
                  "edge/f/_blobs/abc", "edge/f/cam-1/blob_need", "other/f/cam-1/x"):
        assert parse_message(topic, b"anything") is None, topic
    assert parse_message("edge/f/cam-1/status", b"") is None  # a cleared retained message
    with pytest.raises(PayloadError):
        parse_message("edge/f/cam-1/deployment", b'{"id": "r-7"}')
    with pytest.raises(PayloadError):
        parse_message("edge/f/cam-1/telemetry",
                      b'{"id":"x","device":"cam-1","stream":"telemetry","seq":1,"ts":1,'
                      b'"payload":{"v":NaN}}')


ENVELOPE = b'{"id":%s,"device":"cam-1","stream":"detections","seq":1,"ts":1,"payload":%s}'


@pytest.mark.parametrize(("topic", "data", "why"), [
    # what no database can store or the API send back as JSON
    ("edge/f/cam-1/detections", ENVELOPE % (b'"\\ud800x"', b"{}"), "surrogate"),
    ("edge/f/cam-1/detections", ENVELOPE % (b'"\xed\xa0\x80"', b"{}"), "UTF-8"),
    ("edge/f/cam-1/detections", ENVELOPE % (b'"a\\u0000"', b"{}"), "NUL"),
    ("edge/f/cam-1/detections", ENVELOPE % (b'"a"', b'{"k\\u0000": 1}'), "NUL"),
    ("edge/f/cam-1/ack", b'{"id": "c1", "ok": false, "error": "x\\u0000"}', "NUL"),
    ("edge/f/cam-1/status", b'{"state": "online", "model": "\\uDFFF"}', "surrogate"),
    # NaN and infinities (1e400 parses as one): /api/rollouts could not answer
    ("edge/f/cam-1/deployment", b'{"id": "r-1", "state": "downloading", "progress": NaN}',
     "JSON"),
    ("edge/f/cam-1/status", b'{"state": "online", "temp": Infinity}', "JSON"),
    ("edge/f/cam-1/ack", b'{"id": "c1", "ok": true, "result": {"v": 1e400}}', "JSON"),
    ("edge/f/cam-1/detections", ENVELOPE % (b'"a"', b'{"v": -Infinity}'), "JSON"),
])
def test_parse_refuses_what_cannot_be_stored_or_served(topic, data, why):
    with pytest.raises(PayloadError, match=why):
        parse_message(topic, data)


def test_parse_keeps_escaped_text_that_is_fine():
    emoji = parse_message("edge/f/cam-1/detections",
                          ENVELOPE % (b'"\\ud83d\\ude00"', b'{"note": "\\\\u0000"}'))
    assert isinstance(emoji, MessageRow) and emoji.msg_id == "\U0001f600"
    assert json.loads(emoji.payload) == {"note": "\\u0000"}  # a backslash, not a NUL


def test_a_stored_nan_cannot_break_the_api(db_url):
    """Rows written before the parsers refused NaN read back with null there, so /api/rollouts
    and the others still answer (Starlette's JSON refuses NaN)."""
    store = open_store(db_url)
    with store.transaction() as cur:
        cur.execute(store._sql("INSERT INTO rollouts VALUES (?, ?, ?, ?, ?)"),
                    ("r-1", "cam-1", "downloading", '{"progress":NaN,"id":"r-1"}', 1.7e9))
        cur.execute(store._sql("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"),
                    ("cam-1", "events", 1, "e-1", 1.7e9, 1.7e9, '{"score":Infinity}'))
    (rollout,) = store.rollouts()
    assert rollout["detail"] == {"progress": None, "id": "r-1"}
    assert store.events()[0]["payload"] == {"score": None}
    json.dumps([store.rollouts(), store.events()], allow_nan=False)
    store.close()
