"""MqttSync against a real broker: delivery, order, outages, presence and telemetry."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from synctest_broker import Broker, wait_for

from sync import MqttSync, PayloadError, SyncError, decode_envelope

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.5}


def make_sync(broker: Broker, tmp_path: Path, device: str = "cam-01", **kw: object) -> MqttSync:
    settings = {**FAST, **kw}
    return MqttSync(broker.url, device, tmp_path / f"{device}.db", **settings)


def envelopes(recorder, topic):
    return [decode_envelope(m.payload) for m in recorder.on(topic)]


def test_publish_reaches_broker_in_order_with_ids_and_seqs(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/#"])
    with make_sync(broker, tmp_path) as s:
        receipts = [s.publish("detections", {"n": i}) for i in range(300)]
        receipts += [s.publish("events", {"n": i}) for i in range(5)]
        wait_for(lambda: len(rec.on("edge/default/cam-01/detections")) >= 300, 20, "300 messages")
        wait_for(lambda: s.state().outbox.depth == 0, 10, "outbox drained")
    got = envelopes(rec, "edge/default/cam-01/detections")
    assert [e.seq for e in got] == list(range(1, 301))
    assert [e.payload["n"] for e in got] == list(range(300))
    assert len({e.id for e in got}) == 300
    assert [r.seq for r in receipts[300:]] == [1, 2, 3, 4, 5]
    assert all(e.device == "cam-01" and e.stream == "detections" for e in got)


def test_one_at_a_time_with_an_empty_outbox_in_between(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/detections"])
    with make_sync(broker, tmp_path) as s:
        s.wait_connected(10)
        for i in range(1, 21):
            s.publish("detections", {"n": i})
            wait_for(lambda i=i: len(rec.on("edge/default/cam-01/detections")) >= i, 10,
                     f"message {i}")
        assert s.state().reconnects == 0
    assert [e.seq for e in envelopes(rec, "edge/default/cam-01/detections")] == list(
        range(1, 21)
    )


def test_broker_down_at_start_then_up(tmp_path, broker, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/detections"], session="rec-down")
    broker.stop()  # the recorder's session survives (SIGTERM saves it)
    s = make_sync(broker, tmp_path).start()
    try:
        for i in range(50):
            s.publish("detections", {"n": i})
        assert s.state().outbox.depth >= 50
        wait_for(lambda: s.state().last_error, 10, "the connect error")
        assert "connection refused" in s.state().last_error and not s.state().connected
        broker.start()
        wait_for(lambda: s.state().outbox.depth == 0, 20, "outbox drained after broker start")
        wait_for(lambda: len(rec.on("edge/default/cam-01/detections")) >= 50, 20, "delivery")
        got = envelopes(rec, "edge/default/cam-01/detections")
        assert [e.seq for e in got] == list(range(1, 51))
        assert [e.payload["n"] for e in got] == list(range(50))
    finally:
        s.close()


def test_broker_restart_mid_stream_loses_nothing(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/detections"], session="rec-restart")
    with make_sync(broker, tmp_path) as s:
        for i in range(200):
            s.publish("detections", {"n": i})
        broker.restart(signal.SIGTERM)
        for i in range(200, 400):
            s.publish("detections", {"n": i})
        wait_for(
            lambda: {e.seq for e in envelopes(rec, "edge/default/cam-01/detections")}
            >= set(range(1, 401)),
            30,
            "all 400 seqs after restart",
        )
    payloads = {e.seq: e.payload["n"] for e in envelopes(rec, "edge/default/cam-01/detections")}
    assert all(payloads[q] == q - 1 for q in range(1, 401))


def test_stalled_broker_does_not_block_and_recovers(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/detections"], session="rec-stall")
    with make_sync(broker, tmp_path) as s:
        s.wait_connected(10)
        broker.pause()
        try:
            for i in range(500):
                s.publish("detections", {"n": i})
            assert s.state().outbox.depth > 0
        finally:
            broker.resume()
        wait_for(
            lambda: {e.seq for e in envelopes(rec, "edge/default/cam-01/detections")}
            >= set(range(1, 501)),
            40,
            "all messages after the stall",
        )


def test_status_online_retained_and_offline_on_close(broker, tmp_path, recorder_factory):
    s = make_sync(broker, tmp_path, model="yolo-int8").start()
    s.wait_connected(10)
    rec = recorder_factory(broker.port, ["edge/default/+/status"])
    wait_for(lambda: rec.on("edge/default/cam-01/status"), 5, "retained status")
    first = rec.on("edge/default/cam-01/status")[0]
    assert first.retain
    assert first.json()["state"] == "online"
    assert first.json()["model"] == "yolo-int8"
    s.close()
    wait_for(
        lambda: rec.on("edge/default/cam-01/status")[-1].json()["state"] == "offline",
        5,
        "offline status after close",
    )


def test_telemetry_has_runtime_values_and_outbox_counts(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/telemetry"])
    calls = []

    def provider():
        calls.append(1)
        return {"fps": 29.5, "latency_p95_ms": 41.0, "drift": 0.02}

    with make_sync(broker, tmp_path, telemetry=provider) as s:
        s.update_telemetry(drops=3)
        wait_for(lambda: rec.on("edge/default/cam-01/telemetry"), 10, "telemetry")
    body = decode_envelope(rec.on("edge/default/cam-01/telemetry")[0].payload).payload
    assert body["fps"] == 29.5 and body["latency_p95_ms"] == 41.0 and body["drift"] == 0.02
    assert body["drops"] == 3
    for key in ("outbox_depth", "outbox_dropped", "outbox_bytes", "connected", "uptime_s"):
        assert key in body


def test_failing_telemetry_provider_is_reported_not_raised(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/telemetry"])

    def provider():
        raise RuntimeError("camera gone")

    with make_sync(broker, tmp_path, telemetry=provider) as s:
        wait_for(lambda: rec.on("edge/default/cam-01/telemetry"), 10, "telemetry")
        s.publish("detections", {"still": "working"})
    body = json.loads(rec.on("edge/default/cam-01/telemetry")[0].payload)["payload"]
    assert body["telemetry_error"] == "RuntimeError: camera gone"


@pytest.mark.parametrize(
    ("stream", "payload"),
    [
        ("status", {}),  # reserved
        ("deploy", {}),  # a rollout topic: the device's own deploy agent reads it
        ("deployment", {}),
        ("blob_need", {}),
        ("a/b", {}),  # breaks the topic layout
        ("det#", {}),
        ("", {}),
        ("detections", {"x": object()}),  # not JSON
        ("detections", {"x": float("nan")}),
    ],
)
def test_publish_refuses_bad_input_with_project_error(tmp_path, stream, payload):
    s = MqttSync("mqtt://127.0.0.1:1", "cam-01", tmp_path / "o.db")
    try:
        with pytest.raises(PayloadError):
            s.publish(stream, payload)
        assert s.state().outbox.depth == 0
    finally:
        s.close()


@pytest.mark.parametrize("priority", ["high", 2.5, 2**40])
def test_publish_refuses_bad_priority(tmp_path, priority):
    s = MqttSync("mqtt://127.0.0.1:1", "cam-01", tmp_path / "o.db")
    try:
        with pytest.raises(PayloadError, match="priority"):
            s.publish("detections", {}, priority=priority)
    finally:
        s.close()


def test_publish_after_close_is_a_clear_error(tmp_path):
    s = MqttSync("mqtt://127.0.0.1:1", "cam-01", tmp_path / "o.db")
    s.close()
    with pytest.raises(SyncError, match="closed"):
        s.publish("detections", {})


def test_full_outbox_drops_low_priority_first_and_says_so(broker, tmp_path, recorder_factory):
    # A persistent session made before the outage, so nothing is missed after the restart.
    rec = recorder_factory(broker.port, ["edge/default/cam-01/+"], session="full-rec")
    broker.stop()
    s = make_sync(broker, tmp_path, outbox_max_bytes=16_384).start()
    try:
        for i in range(300):
            s.publish("frames", {"i": i, "pad": "x" * 100}, priority=0)
        for i in range(20):
            s.publish("alerts", {"i": i}, priority=3)
        stats = s.state().outbox
        assert stats.bytes <= 16_384
        assert stats.dropped.get(0, 0) > 0 and 3 not in stats.dropped
        assert s.telemetry_snapshot()["outbox_dropped"] == stats.dropped_total
        broker.start()
        wait_for(lambda: len(rec.on("edge/default/cam-01/alerts")) >= 20, 20, "all alerts")
        wait_for(lambda: any(decode_envelope(m.payload).payload.get("outbox_dropped", 0) > 0
                             for m in rec.on("edge/default/cam-01/telemetry")),
                 20, "telemetry reporting the drops")
        frames = [e.seq for e in envelopes(rec, "edge/default/cam-01/frames")]
        assert frames and frames == sorted(frames)
        assert frames[0] > 1  # the oldest low-priority frames were the ones dropped
        assert frames[-1] == 300  # the newest were kept
    finally:
        s.close()
