"""A number no float holds (a 400-digit integer is valid JSON) is stored, and reads back as
null: it used to raise OverflowError in every reader, so one device's telemetry took down
/api/devices, /api/live and the alerts of every device after it in a batch."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from synctest_broker import wait_for

from sync.console import alerts
from sync.console.alerts import AlertEngine, load_rules
from sync.console.ingest import Batch
from sync.console.records import MessageRow, parse_message
from sync.console.store import open_store

HUGE = "1" + "0" * 400


def telemetry(device: str, payload: str, seq: int = 1) -> bytes:
    return (f'{{"id":"{device}-{seq}","device":"{device}","stream":"telemetry","seq":{seq},'
            f'"ts":{time.time():.3f},"payload":{payload}}}').encode()


def test_a_huge_integer_reads_back_as_null(db_url):
    store = open_store(db_url)
    try:
        row = parse_message("edge/f/cam-2/telemetry", telemetry(
            "cam-2", f'{{"fps":{HUGE},"latency_p95_ms":{HUGE},"drift":{{"brightness_psi":'
                     f'{HUGE}}},"outbox_depth":3}}'))
        good = parse_message("edge/f/cam-1/telemetry", telemetry("cam-1", '{"fps":29.5}'))
        assert store.write([row, good]).inserted == 2
        fleet = store.devices()
        assert [d["device"] for d in fleet] == ["cam-1", "cam-2"]
        bad = store.device("cam-2")
        assert bad is not None and bad["fps"] is None and bad["latency_p95_ms"] is None
        assert bad["drift_psi"] is None and bad["outbox_depth"] == 3
        assert bad["latency_baseline_ms"] is None
        (point,) = store.telemetry("cam-2")
        assert "fps" not in point and point["outbox_depth"] == 3
        json.dumps([fleet, store.telemetry("cam-2")], allow_nan=False)
    finally:
        store.close()


def test_one_device_s_huge_number_never_stops_alerts_for_others(tmp_path):
    store = open_store(str(tmp_path / "console.db"))
    engine = AlertEngine(store, load_rules())
    now = time.time()
    batch = Batch()
    batch.add(MessageRow("cam-bad", "telemetry", 1, "a", now, now,
                         json.dumps({"fps": int(HUGE), "capacity_fps": 30})))
    batch.add(MessageRow("cam-good", "telemetry", 1, "b", now, now,
                         json.dumps({"drift_psi": 0.9})))
    try:
        engine.on_batch(batch)
        assert store.open_alert_keys() == {("cam-good", "drift_psi")}
    finally:
        store.close()


def test_a_rule_failing_on_one_device_still_evaluates_the_others(tmp_path, monkeypatch):
    """Whatever a rule trips over in one device's report, the other devices of the batch are
    still evaluated; the failure is raised afterwards (the ingest counts a hook error)."""
    def fussy(values, ctx, params):
        if "odd" in values:
            raise ArithmeticError("cannot judge this report")
        return None

    monkeypatch.setitem(alerts.TELEMETRY_RULES, "fussy", (fussy, {}))
    store = open_store(str(tmp_path / "console.db"))
    engine = AlertEngine(store, {**load_rules(), "fussy": {}})
    try:
        with pytest.raises(ArithmeticError):
            engine.evaluate({"cam-a": {"odd": 1}, "cam-b": {"drift_psi": 0.9}})
        assert store.open_alert_keys() == {("cam-b", "drift_psi")}
    finally:
        store.close()


def test_the_api_and_live_stream_answer_with_a_huge_number(serve_factory, publisher, tmp_path):
    serve = serve_factory(str(tmp_path / "console.db"))
    publisher.status("cam-01")
    publisher.status("cam-02")
    publisher.flush([publisher.envelope("cam-01", "telemetry", 1, {"fps": 29.5}),
                     publisher.raw("edge/default/cam-02/telemetry",
                                   telemetry("cam-02", f'{{"fps":{HUGE}}}'))])
    wait_for(lambda: serve.get("/api/stats")["ingest"]["stored"] == 2, 30, "both stored")
    fleet = serve.get("/api/devices")
    assert [(d["device"], d["fps"]) for d in fleet] == [("cam-01", 29.5), ("cam-02", None)]
    assert serve.get("/api/devices/cam-02")["fps"] is None
    assert serve.get("/api/devices/cam-02/telemetry")[0]["seq"] == 1
    with urllib.request.urlopen(serve.base + "/api/live", timeout=10) as live:
        lines = [live.readline() for _ in range(4)]
    data = next(line for line in lines if line.startswith(b"data: "))
    snap = json.loads(data[len(b"data: "):])
    assert "error" not in snap and len(snap["devices"]) == 2
    assert serve.get("/api/stats")["ingest"]["hook_errors"] == 0
