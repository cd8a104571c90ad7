"""Alerts open and resolve on scripted telemetry, are published to MQTT and POSTed to a
webhook; a wrong alerts file is one line and exit 2 (issue 12 acceptance)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from synctest_broker import REPO_ROOT, wait_for

from sync.config import SyncConfig
from sync.console.alerts import AlertEngine, AlertNotice, Notifier, load_rules
from sync.console.ingest import Ingest
from sync.console.store import open_store
from sync.errors import ConfigError

NORMAL = {"latency_p95_ms": 20.0, "fps": 25.0, "capacity_fps": 30.0, "error_rate": 0.0,
          "drift": {"level": "stable", "brightness_psi": 0.05, "confidence_psi": 0.02},
          "quality_anomaly_rate": 0.01, "outbox_depth": 3}
BAD = {"latency_p95_ms": 55.0, "fps": 12.0, "capacity_fps": 30.0, "error_rate": 0.04,
       "drift": {"level": "drifted", "brightness_psi": 0.45, "confidence_psi": 0.1},
       "quality_anomaly_rate": 0.2}
TELEMETRY_RULES = {"latency_p95", "throughput", "error_rate", "drift_psi", "data_quality",
                   "outbox_growing"}


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Hook.received
    server.shutdown()


def test_alerts_open_and_resolve_on_scripted_telemetry(broker, publisher, recorder_factory,
                                                       tmp_path, webhook):
    url, posted = webhook
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text("outbox_growing: {samples: 3, min_depth: 100}\noffline: {minutes: 1}\n")
    rules = load_rules(rules_file)
    db = str(tmp_path / "console.db")
    store = open_store(db)
    ingest = Ingest(SyncConfig(broker=broker.url), store)
    notices = recorder_factory(broker.port, ["console/default/alerts"])
    notifier = Notifier(lambda n: ingest.publish("console/default/alerts",
                                                 json.dumps(n.__dict__).encode()), url)
    engine = AlertEngine(store, rules, notifier)
    ingest.hooks.append(engine.on_batch)
    ingest.start()
    sent = 0

    def step(values: dict) -> None:
        nonlocal sent
        sent += 1
        publisher.flush([publisher.envelope("cam-01", "telemetry", sent, values)])
        wait_for(lambda: ingest.stats.stored >= sent, 20, "telemetry stored")

    def open_rules() -> set[str]:
        return {a["rule"] for a in store.alerts(open_only=True, device="cam-01")}

    try:
        step(NORMAL)  # sets the latency baseline (20 ms)
        assert open_rules() == set()
        step(BAD | {"outbox_depth": 150})
        step(BAD | {"outbox_depth": 300})
        step(BAD | {"outbox_depth": 450})
        wait_for(lambda: open_rules() == TELEMETRY_RULES, 20, "every telemetry alert open")
        step(NORMAL)
        wait_for(lambda: open_rules() == set(), 20, "every alert resolved")

        # offline: nothing heard for more than `minutes`, then heard of again
        publisher.raw("edge/default/cam-02/seen",
                      json.dumps({"ts": time.time() - 120}).encode(), retain=True)
        wait_for(lambda: store.device_state("cam-02") is not None, 20, "cam-02 known")
        engine.sweep()
        assert {a["rule"] for a in store.alerts(open_only=True, device="cam-02")} == {"offline"}
        publisher.raw("edge/default/cam-02/seen", json.dumps({"ts": time.time()}).encode(),
                      retain=True)
        wait_for(lambda: time.time() - (store.device_state("cam-02")["last_seen"] or 0) < 60,
                 20, "cam-02 seen again")
        engine.sweep()
        assert store.alerts(open_only=True, device="cam-02") == []
        wait_for(lambda: len(posted) == 14, 20, "14 webhook POSTs")
        wait_for(lambda: len(notices.on("console/default/alerts")) == 14, 20, "14 notices")
    finally:
        ingest.stop()
        notifier.close()
    history = store.alerts(device="cam-01")
    assert {a["rule"] for a in history} == TELEMETRY_RULES
    assert all(a["resolved_at"] is not None and a["resolved_at"] >= a["opened_at"]
               for a in history)
    latency = next(a for a in history if a["rule"] == "latency_p95")
    assert latency["value"] == 55.0 and latency["threshold"] == 40.0  # 2 x the 20 ms baseline
    mqtt_events = [json.loads(m.payload) for m in notices.on("console/default/alerts")]
    assert sorted(e["event"] for e in mqtt_events) == ["open"] * 7 + ["resolved"] * 7
    assert sorted((p["device"], p["rule"], p["event"]) for p in posted) == sorted(
        (e["device"], e["rule"], e["event"]) for e in mqtt_events)
    assert engine.opened == 7 and engine.resolved == 7
    store.close()


def test_wrong_alert_settings_are_one_line(tmp_path):
    bad = tmp_path / "alerts.yaml"
    bad.write_text("latency_p95: {factr: 3}\n")
    with pytest.raises(ConfigError, match="latency_p95.*factr"):
        load_rules(bad)
    bad.write_text("drift_psi: {max: -1}\n")
    with pytest.raises(ConfigError, match="drift_psi/max"):
        load_rules(bad)
    done = subprocess.run([sys.executable, "-m", "sync.fleet", "serve", "--alerts", str(bad)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "drift_psi/max" in done.stderr
    bad.write_text("latency_p95:\n  factor: 2\n offline: {minutes: 3}\n")  # indentation
    with pytest.raises(ConfigError) as err:
        load_rules(bad)
    assert str(err.value).startswith(f"alerts file {bad}:3:2: not valid YAML")
    assert "\n" not in str(err.value)


def test_closing_the_notifier_never_waits_on_a_stuck_receiver():
    """A broker or webhook that hangs must not hold up shutdown, however full the queue."""
    release = threading.Event()
    notifier = Notifier(lambda notice: release.wait(), maxsize=2)

    def notice(i: int) -> AlertNotice:
        return AlertNotice("open", f"cam-{i}", "drift_psi", 1.7e9)

    notifier.notify(notice(0))
    wait_for(notifier._queue.empty, 20, "the sender to be stuck on the first notice")
    for i in (1, 2, 3):
        notifier.notify(notice(i))  # two wait, the third is dropped and counted
    assert notifier.errors == 1
    closer = threading.Thread(target=notifier.close, kwargs={"timeout": 0.2}, daemon=True)
    closer.start()
    closer.join(60)
    stuck = closer.is_alive()
    release.set()
    assert not stuck, "Notifier.close blocked on the full queue"
