"""Schema migrations and the record parsers at the console's edge."""

from __future__ import annotations

import json

import pytest

from sync.console.records import RolloutRow, StatusRow, parse_message
from sync.console.store import StoreError, open_store
from sync.errors import PayloadError


def test_migrations_apply_once_and_a_stale_schema_is_refused(db_url):
    with pytest.raises(StoreError, match="schema is at version 0, this console needs 1"):
        open_store(db_url, migrate_schema=False)
    store = open_store(db_url)
    assert store.schema_version() == 1
    assert store.migrate() == []  # nothing left to apply
    store.close()
    again = open_store(db_url, migrate_schema=False)
    assert again.schema_version() == 1
    again.close()


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
