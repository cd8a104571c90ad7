"""The console's JSON API against a real `edge-fleet serve` process and a real device client:
what devices report, range queries, commands and their acks, and no state change without the
token (issue 12 acceptance)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from synctest_broker import REPO_ROOT, free_port, wait_for

from sync import MqttSync
from sync.fleet import build_parser, main

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.3}
TOKEN = "t0ken-for-the-console-tests"
CMD_TOPIC = "edge/default/cam-01/cmd"


@pytest.fixture
def device(broker, tmp_path):
    d = MqttSync(broker.url, "cam-01", tmp_path / "outbox.db", model="det-int8", **FAST).start()
    d.wait_connected(10)
    d.update_telemetry(fps=24.5, latency_p95_ms=31.0, drops=2,
                       drift={"level": "stable", "brightness_psi": 0.03, "confidence_psi": 0.01})
    yield d
    d.close()


def test_api_shows_the_fleet_and_answers_range_queries(serve_factory, device, tmp_path):
    serve = serve_factory(str(tmp_path / "console.db"), token=TOKEN)
    device.publish("events", {"type": "line_cross", "line": "door", "track_id": 4})
    wait_for(lambda: any(d["device"] == "cam-01" and d["fps"] == 24.5
                         for d in serve.get("/api/devices")), 30, "cam-01 with telemetry")
    wait_for(lambda: len(serve.get("/api/devices/cam-01/telemetry")) >= 3, 30, "3 reports")
    points = serve.get("/api/devices/cam-01/telemetry")
    (row,) = serve.get("/api/devices")
    assert row["state"] == "online" and row["model"] == "det-int8"
    assert row["latency_p95_ms"] == 31.0 and row["drift_psi"] == 0.03 and row["dropped"] == 2
    # last seen: at or after the newest report fetched before it, and not in the future
    assert row["outbox_depth"] is not None
    assert points[-1]["ts"] <= row["last_seen"] <= time.time()

    assert [p["seq"] for p in points] == sorted(p["seq"] for p in points)
    middle = points[len(points) // 2]["ts"]
    later = serve.get(f"/api/devices/cam-01/telemetry?since={middle}")
    assert later and all(p["ts"] >= middle for p in later)
    earlier = serve.get(f"/api/devices/cam-01/telemetry?until={middle}&limit=1")
    assert len(earlier) == 1 and earlier[0]["ts"] <= middle
    assert points[0]["drift.brightness_psi"] == 0.03

    wait_for(lambda: serve.get("/api/events?device=cam-01"), 30, "the event")
    (event,) = serve.get("/api/events?device=cam-01")
    assert event["payload"]["line"] == "door"
    assert serve.get("/api/alerts?open=1") == []
    stats = serve.get("/api/stats")
    assert stats["database"]["devices"] == 1 and stats["database"]["schema_version"] == 2
    assert stats["ingest"]["malformed"] == 0 and stats["ingest"]["stored"] >= 4
    assert stats["ingest"]["rejected"] == 0 and stats["ingest"]["dropped_qos0"] == 0
    assert stats["ingest"]["sequence_restarts"] == 0

    for bad in ("/api/devices/cam-01/telemetry?since=yesterday", "/api/events?limit=0"):
        with pytest.raises(Exception, match="400"):
            serve.get(bad)
    with pytest.raises(Exception, match="404"):
        serve.get("/api/devices/nope")


def test_commands_need_the_token_and_their_acks_arrive(serve_factory, device, tmp_path,
                                                        broker, recorder_factory):
    serve = serve_factory(str(tmp_path / "console.db"), token=TOKEN)
    wait_for(lambda: serve.get("/api/devices"), 30, "cam-01 known")
    assert serve.get("/api/devices/cam-01")["commands"] == ["ping", "stats"]
    sent = recorder_factory(broker.port, [CMD_TOPIC])  # what reaches the command topic

    status, body = serve.post("/api/devices/cam-01/commands", {"name": "ping"})
    assert status == 401 and "token" in body["error"]
    status, body = serve.post("/api/devices/cam-01/commands", {"name": "ping"}, token="wrong")
    assert status == 401
    status, body = serve.post("/api/devices/cam-01/commands", {"args": {}}, token=TOKEN)
    assert status == 400 and "name" in body["error"]

    status, body = serve.post("/api/devices/cam-01/commands", {"name": "ping"}, token=TOKEN)
    assert status == 202
    # the broker delivers one connection's messages in order: once the accepted command has
    # arrived, anything published for the refused ones would have arrived before it
    wait_for(lambda: sent.on(CMD_TOPIC), 30, "the accepted command on the command topic")
    assert [json.loads(m.payload)["id"] for m in sent.on(CMD_TOPIC)] == [body["id"]]
    wait_for(lambda: serve.get("/api/devices/cam-01/acks"), 30, "the ping's ack")
    (ack,) = serve.get("/api/devices/cam-01/acks")
    assert ack["cmd_id"] == body["id"] and ack["ok"] is True and ack["name"] == "ping"
    assert ack["sent"] is not None and ack["received"] >= ack["sent"]


def test_a_console_without_a_token_refuses_every_change(serve_factory, tmp_path):
    serve = serve_factory(str(tmp_path / "console.db"))
    status, body = serve.post("/api/devices/cam-01/commands", {"name": "ping"}, token="any")
    assert status == 403 and "EDGE_CONSOLE_TOKEN" in body["error"]
    assert "read-only" in serve.stderr


def test_loopback_by_default_and_bad_settings_are_one_line(tmp_path, broker, capsys):
    """Each mistake is one line on stderr and exit 2. Run through `main` in this process (the
    entry point's own error handling, without a Python start-up per case); the subprocess
    tests below and in test_console_alerts cover the installed command itself."""
    assert build_parser().parse_args(["serve"]).listen == "127.0.0.1:8080"
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are my notes, not a database\n" * 200)
    busy = socket.create_server(("127.0.0.1", 0))
    busy_port = busy.getsockname()[1]
    cases = [
        (["--db", "mysql://x/y"], "unknown database URL scheme"),
        (["--db", f"postgresql://nobody@127.0.0.1:{free_port()}/x"], "cannot connect"),
        (["--listen", "8080"], "HOST:PORT"),
        (["--db", str(tmp_path / "missing" / "c.db")], "does not exist"),
        (["--db", str(not_a_db)], f"{not_a_db} is not a SQLite database: give --db a new"),
        (["--listen", f"127.0.0.1:{busy_port}"], f"127.0.0.1:{busy_port}: cannot listen there: "
                                                 "the port is in use"),
        (["--webhook", "ftp://hooks.example.com/x"], "http:// or https://"),
        (["--alert-topic", "console/#"], "without + or #"),
    ]
    try:
        for args, message in cases:
            code = main(["--broker", broker.url, "serve", "--db", str(tmp_path / "c.db"),
                         *args])
            err = capsys.readouterr().err
            assert code == 2, (args, err)
            assert message in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err
    finally:
        busy.close()
    assert not_a_db.read_text().startswith("these are my notes")  # left as it was


def test_edge_fleet_works_without_the_console_extra(broker):
    """A device-style install (no starlette, uvicorn, psycopg, yaml): `edge-fleet devices`
    runs and `serve` says what to install in one line."""
    hide = ("import sys\nfor m in ('starlette', 'uvicorn', 'psycopg', 'yaml'):\n"
            "    sys.modules[m] = None\nfrom sync.fleet import main\nsys.exit(main(sys.argv[1:]))")
    run = [sys.executable, "-c", hide, "--broker", broker.url]
    done = subprocess.run([*run, "devices", "--wait", "0.2"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*run, "serve"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "pip install 'edge-ai-toolkit[console]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
