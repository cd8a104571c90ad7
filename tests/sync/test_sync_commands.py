"""Commands: every request gets one ack (result or error); bad input never crashes the device."""

from __future__ import annotations

import json

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


def raw_publish(port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(10)
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
