"""One device message the database cannot index (a 6,000-character id, a device or stream
name of thousands of characters) is refused or rejected alone: the rest of the fleet's
messages are still stored (it used to stall the writer, retrying that batch forever)."""

from __future__ import annotations

import json
import secrets

import pytest
from consoletest_helpers import count
from synctest_broker import wait_for

from sync.config import SyncConfig
from sync.console.ingest import Ingest
from sync.console.records import MessageRow, parse_message
from sync.console.store import StoreRejected, open_store
from sync.errors import PayloadError


def envelope(msg_id: str, device: str = "cam-1", stream: str = "detections") -> bytes:
    return json.dumps({"id": msg_id, "device": device, "stream": stream, "seq": 1,
                       "ts": 1.7e9, "payload": {}}).encode()


LONG = "d" + secrets.token_hex(1500)  # 3,001 characters, random so PostgreSQL cannot compress


@pytest.mark.parametrize(("topic", "data", "why"), [
    ("edge/f/cam-1/detections", envelope("x" * 201), "longer than 200"),
    (f"edge/f/{LONG}/detections", envelope("a", device=LONG), "does not name a device"),
    (f"edge/f/cam-1/{LONG}", envelope("a", stream=LONG), "does not name a device"),
    (f"edge/f/{LONG}/status", b'{"state": "online"}', "does not name a device"),
    ("edge/f/cam 1/detections", envelope("a", device="cam 1"), "does not name a device"),
], ids=["long-id", "long-device", "long-stream", "long-status-device", "space"])
def test_overlong_ids_and_names_are_malformed(topic, data, why):
    with pytest.raises(PayloadError, match=why):
        parse_message(topic, data)
    assert isinstance(parse_message("edge/f/cam-1/detections", envelope("x" * 200)), MessageRow)


def test_a_row_over_postgresql_s_index_limit_is_a_rejection(pg_server):
    """The store's own line of defence: ProgramLimitExceeded (index row size) is the row's
    fault, StoreRejected (skipped alone), not an outage the ingest retries forever."""
    store = open_store(pg_server.create_database())
    try:
        big = MessageRow("cam-1", "detections", 1, secrets.token_hex(3000), 1.7e9, 1.7e9, "{}")
        with pytest.raises(StoreRejected, match="ProgramLimitExceeded"):
            store.write([big])
        good = MessageRow("cam-1", "detections", 1, "ok-1", 1.7e9, 1.7e9, "{}")
        assert store.write([good]).inserted == 1
    finally:
        store.close()


def test_poison_ids_and_names_never_stop_the_fleet(broker, publisher, db_url):
    store = open_store(db_url)
    ingest = Ingest(SyncConfig(broker=broker.url), store).start()
    try:
        publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                         for i in range(1, 11)])
        wait_for(lambda: ingest.stats.stored == 10, 30, "the first 10 stored")
        publisher.flush([
            publisher.envelope("cam-02", "detections", 1, {"x": 1},
                               msg_id=secrets.token_hex(3000)),
            publisher.raw(f"edge/default/{LONG}/detections", envelope("a", device=LONG)),
        ])
        publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                         for i in range(11, 111)])
        wait_for(lambda: ingest.stats.stored == 110, 60, "the 100 messages after the poison")
        wait_for(lambda: ingest.stats.received == 112, 30, "every message handled")
    finally:
        ingest.stop()
        store.close()
    assert ingest.stats.malformed == 2 and ingest.stats.db_errors == 0
    assert count(db_url) == 110
    assert count(db_url, "SELECT COUNT(*) FROM messages WHERE device <> 'cam-01'") == 0
