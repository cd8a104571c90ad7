"""Commands: every request gets one ack (result or error); bad input never crashes the device."""

from __future__ import annotations

import json
import sys

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import run_fleet, wait_for

from sync import MqttSync
from sync.commands import CommandRegistry

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.5}


@pytest.fixture
def device(broker, tmp_path):
    s = MqttSync(broker.url, "cam-01", tmp_path / "cam.db", model="m1", **FAST)

    @s.command("add")
    def add(cmd):
        return cmd.args["a"] + cmd.args["b"]

    @s.command("explode")
    def explode(cmd):
        raise ValueError("bad threshold")

    s.start()
    s.wait_connected(10)
    yield s
    s.close()


def raw_publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_send_runs_handler_and_prints_result(broker, device):
    proc = run_fleet("--broker", broker.url, "send", "cam-01", "add", '{"a": 2, "b": 3}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 5


def test_builtin_ping(broker, device):
    proc = run_fleet("send", "cam-01", "ping", "--broker", broker.url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pong"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explode"], "ValueError: bad threshold"),
        (["nope"], "unknown command 'nope' (known: add, explode, ping, stats)"),
        (["add", '{"a": 1}'], "KeyError"),
    ],
)
def test_error_acks_reach_the_sender(broker, device, args, message):
    proc = run_fleet("--broker", broker.url, "send", "cam-01", *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_malformed_requests_get_error_acks_and_device_keeps_working(
    broker, device, recorder_factory
):
    rec = recorder_factory(broker.port, ["edge/default/cam-01/ack"])
    cmd = "edge/default/cam-01/cmd"
    raw_publish(broker.port, cmd, b"not json at all")
    raw_publish(broker.port, cmd, b'{"id": "r2", "name": 5}')
    raw_publish(broker.port, cmd, b'{"id": "r3", "name": "add", "args": [1, 2]}')
    raw_publish(broker.port, cmd, b"[1, 2, 3]")
    wait_for(lambda: len(rec.on("edge/default/cam-01/ack")) >= 4, 10, "four error acks")
    acks = [m.json() for m in rec.on("edge/default/cam-01/ack")]
    assert [a["ok"] for a in acks] == [False] * 4
    assert [a["id"] for a in acks] == [None, "r2", "r3", None]
    assert all("malformed command" in a["error"] for a in acks)
    proc = run_fleet("--broker", broker.url, "send", "cam-01", "add", '{"a": 1, "b": 1}')
    assert proc.returncode == 0 and json.loads(proc.stdout) == 2


def test_send_to_offline_device_says_so(broker, tmp_path):
    s = MqttSync(broker.url, "cam-02", tmp_path / "c2.db", **FAST).start()
    s.wait_connected(10)
    s.close()  # publishes the retained offline status
    proc = run_fleet("--broker", broker.url, "send", "cam-02", "ping", "--timeout", "2")
    assert proc.returncode == 3
    assert "cam-02 is offline" in proc.stderr


def test_send_to_unknown_device_times_out_clearly(broker):
    proc = run_fleet("--broker", broker.url, "send", "ghost", "ping", "--timeout", "1")
    assert proc.returncode == 3
    assert "no answer from ghost" in proc.stderr and "never announced itself" in proc.stderr


def test_registry_rejects_duplicate_names_unless_replaced():
    reg = CommandRegistry()
    reg.register("a", lambda c: 1)
    with pytest.raises(Exception, match="already has a handler"):
        reg.register("a", lambda c: 2)
    reg.register("a", lambda c: 2, replace=True)
    assert reg.handle(b'{"id": "x", "name": "a"}').result == 2


def test_unserialisable_handler_result_is_an_error_ack():
    reg = CommandRegistry()
    reg.register("obj", lambda c: object())
    ack = reg.handle(b'{"id": "x", "name": "obj"}')
    assert not ack.ok and "TypeError" in ack.error


def test_deeply_nested_command_does_not_kill_the_command_thread(broker, device, recorder_factory):
    """Issue 10.6: a payload nested 100,000 levels deep raised RecursionError and killed the
    command thread; every later command went unanswered."""
    rec = recorder_factory(broker.port, ["edge/default/cam-01/ack"])
    deep = b'{"id": "deep", "name": "add", "args": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    raw_publish(broker.port, "edge/default/cam-01/cmd", deep)
    wait_for(lambda: rec.on("edge/default/cam-01/ack"), 10, "an ack for the nested command")
    ack = rec.on("edge/default/cam-01/ack")[0].json()
    assert ack["ok"] is False and "nested too deeply" in ack["error"]
    proc = run_fleet("--broker", broker.url, "send", "cam-01", "add", '{"a": 1, "b": 2}')
    assert proc.returncode == 0 and json.loads(proc.stdout) == 3
    assert device.state().command_errors == 1


def test_handler_failures_are_counted_and_reported_in_telemetry(broker, device):
    for _ in range(2):
        assert run_fleet("--broker", broker.url, "send", "cam-01", "explode").returncode == 1
    assert device.state().command_errors == 2
    stats = json.loads(run_fleet("--broker", broker.url, "send", "cam-01", "stats").stdout)
    assert stats["command_errors"] == 2


def test_retained_command_is_not_executed_again_on_reconnect(broker, tmp_path, recorder_factory):
    """Issue 10.7: a retained message on the command topic ran again on every reconnect."""
    runs = []
    s = MqttSync(broker.url, "cam-r", tmp_path / "r.db", **FAST)
    s.register_command("count", lambda cmd: runs.append(cmd.id) or len(runs))
    rec = recorder_factory(broker.port, ["edge/default/cam-r/ack"])
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.publish("edge/default/cam-r/cmd", b'{"id": "kept", "name": "count"}', qos=1,
              retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    with s.start():
        s.wait_connected(10)
        wait_for(lambda: len(rec.on("edge/default/cam-r/ack")) >= 1, 10, "the first answer")
        broker.restart()  # the device reconnects and is handed the retained message again
        wait_for(lambda: s.state().connected and s.state().reconnects >= 1, 20, "reconnect")
        proc = run_fleet("--broker", broker.url, "send", "cam-r", "count")
        assert proc.returncode == 0, proc.stderr
    assert len(runs) == 1 and runs[0] != "kept"
    refusals = [m.json() for m in rec.on("edge/default/cam-r/ack") if m.json()["id"] == "kept"]
    assert len(refusals) == 1, "one refusal, not one per reconnect"
    assert refusals[0]["ok"] is False and "retained" in refusals[0]["error"]


def test_a_command_retained_while_the_device_listens_runs_once(broker, tmp_path,
                                                               recorder_factory):
    """MQTT 3.1.1 delivers it live with the retain flag cleared: it runs like any command,
    and is not run again when the broker hands it over as retained on reconnect."""
    runs = []
    s = MqttSync(broker.url, "cam-l", tmp_path / "l.db", **FAST)
    s.register_command("count", lambda cmd: runs.append(cmd.id) or len(runs))
    rec = recorder_factory(broker.port, ["edge/default/cam-l/ack"])
    with s.start():
        s.wait_connected(10)
        raw_publish(broker.port, "edge/default/cam-l/cmd", b'{"id": "live", "name": "count"}',
                    retain=True)
        wait_for(lambda: len(rec.on("edge/default/cam-l/ack")) >= 1, 10, "the answer")
        broker.restart()  # reconnect: the broker hands the retained message over again
        wait_for(lambda: s.state().connected and s.state().reconnects >= 1, 20, "reconnect")
        proc = run_fleet("--broker", broker.url, "send", "cam-l", "count")  # after the replay
        assert proc.returncode == 0, proc.stderr
    assert len(runs) == 2 and runs[0] == "live" and runs[1] != "live"
    live = [m.json() for m in rec.on("edge/default/cam-l/ack") if m.json()["id"] == "live"]
    assert [a["ok"] for a in live] == [True]  # answered once, the replay only logged


def test_command_id_seen_twice_runs_once_and_gets_the_same_answer(
    broker, device, recorder_factory
):
    runs = []
    device.register_command("count", lambda cmd: runs.append(cmd.id) or len(runs))
    rec = recorder_factory(broker.port, ["edge/default/cam-01/ack"])
    for _ in range(3):
        raw_publish(broker.port, "edge/default/cam-01/cmd", b'{"id": "once", "name": "count"}')
    wait_for(lambda: len(rec.on("edge/default/cam-01/ack")) >= 3, 10, "three acks")
    assert runs == ["once"]
    assert {m.payload.split(b'"ts"')[0] for m in rec.on("edge/default/cam-01/ack")} == {
        rec.on("edge/default/cam-01/ack")[0].payload.split(b'"ts"')[0]
    }


def test_handler_raising_systemexit_does_not_end_the_command_thread(broker, device):
    """Issue 10.6: SystemExit is not an Exception: a handler calling sys.exit() ended the
    command thread silently."""
    device.register_command("quit", lambda cmd: sys.exit(3))
    proc = run_fleet("--broker", broker.url, "send", "cam-01", "quit")
    assert proc.returncode == 1 and "SystemExit" in proc.stderr
    proc = run_fleet("--broker", broker.url, "send", "cam-01", "add", '{"a": 2, "b": 2}')
    assert proc.returncode == 0 and json.loads(proc.stdout) == 4


def test_nan_and_infinity_never_reach_a_handler():
    """Python's json reads NaN/Infinity; they are not JSON, and a handler was given NaN."""
    reg = CommandRegistry()
    seen = []
    reg.register("ping", lambda c: seen.append(c.args) or "pong")
    for body in (b'{"id": "n1", "name": "ping", "args": {"x": NaN}}',
                 b'{"id": "n2", "name": "ping", "args": {"x": -Infinity}}'):
        ack = reg.handle(body)
        assert not ack.ok and "malformed command" in ack.error and "not a JSON number" in ack.error
    assert reg.handle(b'{"id": "n3", "name": "ping", "args": {"x": 1.5}}').ok
    assert seen == [{"x": 1.5}]
