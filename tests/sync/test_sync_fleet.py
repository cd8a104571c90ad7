"""The ``edge-fleet`` command line against a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import run_fleet, subprocess_env, wait_for

from sync import MqttSync
from sync.envelope import encode_envelope

ROOT = Path(__file__).resolve().parents[2]

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.5}
PUBLISHER = Path(__file__).with_name("synctest_publisher.py")


@pytest.fixture
def tail():
    """Start ``edge-fleet tail`` children; any still running at teardown are stopped."""
    started: list[Tail] = []

    def start(*args: str) -> Tail:
        t = Tail(*args)
        started.append(t)
        return t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait(timeout=20)


class Tail:
    """``edge-fleet tail`` as a child process; lines collected by reader threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sync.fleet", "tail", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        wait_for(lambda: any("listening on" in ln for ln in self.err) or self.proc.poll(), 20,
                 "tail to subscribe")
        assert self.proc.poll() is None, "".join(self.err)

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # like Ctrl-C: prints the summary
        code = self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def test_devices_lists_online_and_offline_with_model_and_last_seen(broker, tmp_path):
    a = MqttSync(broker.url, "cam-a", tmp_path / "a.db", model="det-int8", **FAST).start()
    b = MqttSync(broker.url, "cam-b", tmp_path / "b.db", model="cls-fp16", **FAST).start()
    try:
        a.wait_connected(10)
        b.wait_connected(10)
        b.close()
        proc = run_fleet("--broker", broker.url, "devices", "--json", "--wait", "0.5")
        assert proc.returncode == 0, proc.stderr
        rows = {r["device"]: r for r in map(json.loads, proc.stdout.splitlines())}
        assert rows["cam-a"]["state"] == "online" and rows["cam-a"]["model"] == "det-int8"
        assert rows["cam-b"]["state"] == "offline" and rows["cam-b"]["model"] == "cls-fp16"
        assert rows["cam-a"]["last_seen"] and rows["cam-b"]["last_seen"]
        table = run_fleet("devices", "--broker", broker.url, "--wait", "0.5")
        assert table.returncode == 0
        lines = table.stdout.splitlines()
        assert lines[0].split()[:3] == ["DEVICE", "STATE", "LAST"]
        assert any(ln.startswith("cam-a") and "online" in ln and "det-int8" in ln for ln in lines)
    finally:
        a.close()


def test_last_will_marks_a_killed_device_offline(broker, tmp_path, recorder_factory):
    rec = recorder_factory(broker.port, ["edge/default/+/status"])
    proc = subprocess.Popen(
        [sys.executable, str(PUBLISHER), "--broker", broker.url, "--outbox",
         str(tmp_path / "p.db"), "--device", "cam-k", "--total", "1000000", "--rate", "20"],
        stdout=subprocess.DEVNULL, env=subprocess_env(),
    )
    try:
        wait_for(lambda: any(m.json()["state"] == "online"
                             for m in rec.on("edge/default/cam-k/status")), 20, "online")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    wait_for(lambda: rec.on("edge/default/cam-k/status")[-1].json()["state"] == "offline",
             20, "the Last Will")
    will = rec.on("edge/default/cam-k/status")[-1].json()
    assert will["reason"] == "connection lost"
    devices = run_fleet("--broker", broker.url, "devices", "--json", "--wait", "0.5")
    row = json.loads(devices.stdout.splitlines()[0])
    assert row["device"] == "cam-k" and row["state"] == "offline" and row["last_seen"]


def publish_raw(port: int, items: list[tuple[str, str, int]]) -> None:
    """Publish hand-made envelopes (id, stream, seq) for device dev-x, QoS 1, in order."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for msg_id, stream, seq in items:
        body = encode_envelope(msg_id, "dev-x", stream, seq, 1.0, json.dumps({"s": seq}).encode())
        c.publish(f"edge/default/dev-x/{stream}", body, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_tail_dedups_by_id_reports_gaps_and_keeps_a_persistent_session(broker, tail):
    first = tail("all", "--broker", broker.url, "--session", "archiver")
    assert first.stop() == 0  # the broker now keeps a session with our subscription
    publish_raw(broker.port, [
        ("id1", "det", 1), ("id2", "det", 2), ("id2", "det", 2), ("id3", "det", 3),
        ("id6", "det", 6), ("id4", "det", 4), ("e1", "events", 1),
    ])
    proc = run_fleet("--broker", broker.url, "tail", "all", "--session", "archiver",
                     "--count", "6", "--json", "--duration", "20")
    assert proc.returncode == 0, proc.stderr
    got = [(e["stream"], e["seq"]) for e in map(json.loads, proc.stdout.splitlines())]
    assert got == [("det", 1), ("det", 2), ("det", 3), ("det", 6), ("det", 4), ("events", 1)]
    assert "gap: dev-x/det missing seq 4-5 (2)" in proc.stderr
    assert "duplicates 1" in proc.stderr
    assert "(1 messages missing)" in proc.stderr  # seq 4 came late, seq 5 never


def test_tail_filters_device_and_stream(broker, tmp_path, tail):
    follower = tail("cam-1", "--stream", "detections", "--broker", broker.url, "--json")
    with MqttSync(broker.url, "cam-1", tmp_path / "1.db", **FAST) as one, \
            MqttSync(broker.url, "cam-2", tmp_path / "2.db", **FAST) as two:
        for i in range(5):
            one.publish("detections", {"i": i})
            one.publish("events", {"i": i})
            two.publish("detections", {"i": i})
        wait_for(lambda: len(follower.out) >= 5, 20, "five detections from cam-1")
    assert follower.stop() == 0
    assert "received 5, unique 5, duplicates 0, gaps 0" in "".join(follower.err)
    got = [json.loads(x) for x in follower.out]
    assert {(e["device"], e["stream"]) for e in got} == {("cam-1", "detections")}
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]


def test_shared_subscription_splits_messages_between_consumers(broker, tmp_path, tail):
    tails = [tail("all", "--stream", "detections", "--share", "workers", "--json",
                  "--broker", broker.url) for _ in range(2)]

    def seqs(t: Tail) -> list[int]:
        return [json.loads(x)["seq"] for x in list(t.out)]

    with MqttSync(broker.url, "cam-s", tmp_path / "s.db", **FAST) as s:
        for i in range(200):
            s.publish("detections", {"i": i})
        wait_for(lambda: len(set(seqs(tails[0])) | set(seqs(tails[1]))) >= 200, 30,
                 "200 messages across the group")
    for t in tails:
        assert t.stop() == 0
    a, b = set(seqs(tails[0])), set(seqs(tails[1]))
    assert a | b == set(range(1, 201))
    assert not a & b  # each message went to one member of the group
    assert a and b
    assert not any(ln.startswith("gap:") for t in tails for ln in t.err)


def test_bad_usage_is_one_clear_line(broker):
    proc = run_fleet("--broker", "http://nope", "devices")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "edge-fleet: broker URL 'http://nope' must start with mqtt:// (plain TCP) or "
        "mqtts:// (TLS)"
    )
    proc = run_fleet("--broker", "mqtt://127.0.0.1:1", "devices")
    assert proc.returncode == 2
    assert "connection refused" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_fleet("--broker", broker.url, "send", "cam", "x", "{not json")
    assert proc.returncode == 2 and "JSON" in proc.stderr


def test_help_teaches_with_examples():
    top = run_fleet("--help")
    assert top.returncode == 0
    for text in ("examples:", "edge-fleet send cam-01 ping", "EDGE_SYNC_PASSWORD", "exit codes"):
        assert text in top.stdout
    for sub in ("devices", "tail", "send"):
        proc = run_fleet(sub, "--help")
        assert proc.returncode == 0 and "--broker" in proc.stdout


def publish_bytes(port: int, items: list[tuple[str, bytes, bool]]) -> None:
    """Publish raw payloads (topic, body, retain) at QoS 1, in order."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for topic, body, retain in items:
        c.publish(topic, body, qos=1, retain=retain).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_devices_skips_and_counts_statuses_with_a_bad_timestamp(broker, tmp_path):
    """Issue 10.8: one retained status with "ts": "abc" or 1e20 made `devices` crash."""
    good = MqttSync(broker.url, "cam-ok", tmp_path / "ok.db", **FAST).start()
    try:
        good.wait_connected(10)
        publish_bytes(broker.port, [
            ("edge/default/cam-abc/status", b'{"state": "online", "ts": "abc"}', True),
            ("edge/default/cam-big/status", b'{"state": "online", "ts": 1e20}', True),
            ("edge/default/cam-big/seen", b'{"state": "online", "ts": -5}', True),
            ("edge/default/cam-nan/seen", b'{"ts": NaN}', True),
        ])
        for extra in ([], ["--json"]):
            proc = run_fleet("--broker", broker.url, "devices", "--wait", "0.5", *extra)
            assert proc.returncode == 0, proc.stderr
            assert "Traceback" not in proc.stderr
            assert "cam-ok" in proc.stdout
            assert not any(d in proc.stdout for d in ("cam-abc", "cam-big", "cam-nan"))
            assert "skipped 4 malformed status messages" in proc.stderr
    finally:
        good.close()


def test_tail_keeps_printing_after_an_envelope_it_cannot_show(broker, tail):
    """Issue 10.8: an envelope with "ts": 1e20 killed tail's network thread silently."""
    follower = tail("all", "--broker", broker.url)
    env = '{{"id": "{i}", "device": "dev-x", "stream": "det", "seq": {s}, "ts": {ts}, ' \
          '"payload": {{}}}}'
    publish_bytes(broker.port, [
        ("edge/default/dev-x/det", env.format(i="a", s=1, ts="1e20").encode(), False),
        ("edge/default/dev-x/det", env.format(i="b", s=2, ts='"abc"').encode(), False),
        ("edge/default/dev-x/det", env.format(i="c", s="true", ts="1.0").encode(), False),
        ("edge/default/dev-x/det", env.format(i="d", s=1, ts="1.0").encode(), False),
        ("edge/default/dev-x/det", env.format(i="e", s=2, ts="2.0").encode(), False),
    ])
    wait_for(lambda: len(follower.out) >= 2, 20, "the two valid envelopes")
    assert follower.stop() == 0
    err = "".join(follower.err)
    assert "Traceback" not in err
    assert [ln.split()[2] for ln in follower.out] == ["#1", "#2"]
    assert "skipped 3 malformed" in err


def test_tail_of_a_device_skips_its_rollout_topics_quietly(broker, tail):
    """After a rollout a device's retained deploy and deployment messages sit beside its
    streams: `tail DEVICE` counted each as a malformed message on every start."""
    deploy = json.dumps({"id": "r1", "name": "m", "version": 2}).encode()
    report = json.dumps({"id": "r1", "state": "healthy", "ts": 1.0}).encode()
    publish_bytes(broker.port, [("edge/default/dev-x/deploy", deploy, True),
                                ("edge/default/dev-x/deployment", report, True),
                                ("edge/default/dev-x/blob_need", b'{"chunks": [1]}', False)])
    follower = tail("dev-x", "--broker", broker.url)
    publish_raw(broker.port, [("a", "det", 1)])
    wait_for(lambda: len(follower.out) >= 1, 20, "the detection")
    assert follower.stop() == 0
    err = "".join(follower.err)
    assert "malformed" not in err.replace("skipped 0 malformed", ""), err
    assert "received 1, unique 1" in err


def test_example_device_says_in_one_line_that_its_outbox_is_taken(broker, tmp_path):
    """examples/sync_device.py started twice in one folder: the second copy cannot share the
    first one's outbox; it says so in one line instead of a traceback."""
    example = [sys.executable, str(ROOT / "examples" / "sync_device.py"), "--broker",
               broker.url, "--frames", "400", "--fps", "20"]
    first = subprocess.Popen(example, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "cam-01.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(example[:-4] + ["--frames", "1"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60,
                                env=subprocess_env())
    finally:
        first.kill()
        first.wait(timeout=10)
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    assert "in use by another process" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
