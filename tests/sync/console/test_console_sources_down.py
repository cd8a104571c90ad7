"""A device's ``sources_down`` (cameras being reopened) through the console: checked at
ingest (a bad list is one malformed field, the rest of the report is stored), returned by the
API for the device, and alerted on by the ``sources_down`` rule, against a real mosquitto and
a real `edge-fleet serve` on both databases."""

from __future__ import annotations

import json

import pytest
from synctest_broker import wait_for

from sync import MqttSync
from sync.console.records import MAX_SOURCES_DOWN, MessageRow, parse_message
from sync.envelope import encode_envelope

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.3}
HOSTILE = '<img src=x onerror="document.title=1">'
BAD_LISTS = [
    "lobby",  # not a list
    [1, 2],  # not strings
    ["lobby", None],
    [""],  # not a name
    ["x" * 201],  # longer than a name
    ["cam"] * (MAX_SOURCES_DOWN + 1),  # more than a device has cameras
    {"lobby": True},
]


def telemetry(values: dict) -> bytes:
    return encode_envelope("m-1", "cam-01", "telemetry", 1, 1.7e9, json.dumps(values).encode())


@pytest.mark.parametrize("bad", BAD_LISTS, ids=range(len(BAD_LISTS)))
def test_a_bad_sources_down_is_left_out_and_the_rest_of_the_report_kept(bad):
    row = parse_message("edge/default/cam-01/telemetry",
                        telemetry({"fps": 12.5, "sources_down": bad}))
    assert isinstance(row, MessageRow)
    assert json.loads(row.payload) == {"fps": 12.5}
    assert len(row.bad_fields) == 1 and row.bad_fields[0].startswith("sources_down: ")


def test_a_good_sources_down_is_stored_as_sent_and_other_streams_are_not_checked():
    good = ["lobby", HOSTILE, "x" * 200]
    row = parse_message("edge/default/cam-01/telemetry",
                        telemetry({"fps": 0, "sources_down": good}))
    assert isinstance(row, MessageRow) and row.bad_fields == ()
    assert json.loads(row.payload)["sources_down"] == good
    # an application stream may carry a field of that name for its own reasons
    body = encode_envelope("m-2", "cam-01", "events", 1, 1.7e9, b'{"sources_down": 3}')
    row = parse_message("edge/default/cam-01/events", body)
    assert isinstance(row, MessageRow) and row.bad_fields == ()


def test_cameras_down_reach_the_api_and_open_and_resolve_an_alert(serve_factory, broker,
                                                                  publisher, db_url, tmp_path):
    serve = serve_factory(db_url)
    device = MqttSync(broker.url, "cam-01", tmp_path / "outbox.db", model="det-int8",
                      **FAST).start()  # fmt: skip
    try:
        device.update_telemetry(fps=25.0, sources_down=["lobby", HOSTILE])

        def row(name: str) -> dict:
            return next((d for d in serve.get("/api/devices") if d["device"] == name), {})

        wait_for(lambda: row("cam-01").get("sources_down") == ["lobby", HOSTILE], 30,
                 "cam-01's cameras down in the fleet table")
        assert serve.get("/api/devices/cam-01")["sources_down"] == ["lobby", HOSTILE]
        wait_for(lambda: [a["rule"] for a in serve.get("/api/alerts?open=1")]
                 == ["sources_down"], 30, "the sources_down alert open")
        (alert,) = serve.get("/api/alerts?open=1")
        assert alert["value"] == 2 and alert["threshold"] == 0
        assert "lobby" in alert["message"] and HOSTILE in alert["message"]

        # a bad list from another device: that field counted, its fps still shown
        publisher.flush([publisher.envelope("cam-02", "telemetry", 1,
                                            {"fps": 7.5, "sources_down": [1, 2]})])
        wait_for(lambda: row("cam-02").get("fps") == 7.5, 30, "cam-02's fps")
        assert row("cam-02")["sources_down"] == []
        ingest = serve.get("/api/stats")["ingest"]
        assert ingest["malformed_fields"] == 1 and ingest["malformed"] == 0
        assert "sources_down" in ingest["last_malformed"]

        device.update_telemetry(sources_down=[])  # the cameras came back
        wait_for(lambda: serve.get("/api/alerts?open=1") == [], 30, "the alert resolved")
        assert serve.get("/api/devices/cam-01")["sources_down"] == []
    finally:
        device.close()
