"""Property-based fuzzing of command payloads (Hypothesis): whatever arrives on the command
topic, the device answers with a clear error or a valid result; never a traceback, never a
dead command thread."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import MOSQUITTO, Broker, Recorder, wait_for

from sync import MqttSync
from sync.commands import CommandAck, CommandRegistry

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 30}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Arrays/objects nested up to 200,000 levels, alone or as a command's arguments."""
    depth = draw(st.integers(1, 200_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    body = opener * depth + (b"1" if opener == b'{"a":' else b"") + closer * depth
    if draw(st.booleans()):
        return b'{"id": "n", "name": "echo", "args": {"x": ' + body + b"}}"
    return body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Well-formed, half-formed and hostile requests."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return draw(nested())
    obj = {
        "id": draw(st.one_of(st.text(max_size=20), json_values)),
        "name": draw(st.sampled_from(["echo", "boom", "deep", "ping", "nope"]) | json_values),
        "args": draw(st.one_of(st.dictionaries(st.text(max_size=8), json_values), json_values)),
    }
    if kind == 3:
        obj = draw(st.sampled_from([[obj], obj["args"], {"id": obj["id"]}, obj]))
    return json.dumps(obj).encode()


def boom(cmd):
    raise RecursionError("handler recursed")


def deep(cmd):
    value: list = []
    for _ in range(100_000):
        value = [value]
    return value  # a result JSON cannot encode


def registry() -> CommandRegistry:
    reg = CommandRegistry()
    reg.register("echo", lambda cmd: cmd.args)
    reg.register("boom", boom)
    reg.register("deep", deep)
    return reg


def check_ack(ack: CommandAck) -> None:
    body = json.loads(ack.to_json("dev"))
    assert set(body) == {"id", "device", "name", "ok", "result", "error", "ts"}
    if ack.ok:
        assert ack.error is None
    else:
        assert isinstance(ack.error, str) and ack.error
        assert "Traceback" not in ack.error and "\n" not in ack.error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests(), retained=st.booleans())
def test_any_command_payload_gets_a_clear_error_or_a_valid_result(data, retained):
    ack = registry().handle(data, retained=retained)
    assert ack is not None  # a fresh registry has seen no id: every request is answered
    check_ack(ack)
    if retained:
        assert not ack.ok


@pytest.mark.parametrize("data", [b'{"id": "a\\ud800", "name": "echo"}',
                                  b'{"id": "b", "name": "echo", "args": {"x": "\\udc00"}}'])
def test_a_lone_surrogate_is_malformed_not_echoed_or_handed_to_a_handler(data):
    """JSON can escape half of a UTF-16 pair; Python reads it into a str no UTF-8 encoder
    takes, which an ack echoed (the id) and a handler received (args)."""
    ack = registry().handle(data)
    assert not ack.ok and ack.id is None and "lone surrogate" in ack.error
    pair = b'{"id": "c\\u00e9", "name": "echo", "args": {"x": "\\ud83d\\ude00"}}'
    ok = registry().handle(pair)  # a whole surrogate pair is a character
    assert ok.ok and ok.id == "c\u00e9" and ok.result == {"x": "\U0001f600"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One broker, one device with fuzz-worthy handlers, and a subscriber to its acks."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
    work = tmp_path_factory.mktemp("fuzz")
    broker = Broker(work).start()
    device = MqttSync(broker.url, "fuzz", work / "fuzz.db", **FAST)
    for name, fn in (("echo", lambda cmd: cmd.args), ("boom", boom), ("deep", deep)):
        device.register_command(name, fn)
    device.start()
    device.wait_connected(10)
    acks = Recorder(broker.port, ["edge/default/fuzz/ack"])
    sender = mqtt.Client(CallbackAPIVersion.VERSION2)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    yield device, acks, sender
    sender.disconnect()
    sender.loop_stop()
    acks.close()
    device.close()
    broker.stop()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=requests())
def test_device_answers_every_fuzzed_command_and_its_thread_lives_on(live, data):
    device, acks, sender = live
    before = len(acks.on("edge/default/fuzz/ack"))
    sender.publish("edge/default/fuzz/cmd", data, qos=1).wait_for_publish(10)
    probe = f"probe-{before}"
    sender.publish("edge/default/fuzz/cmd",
                   json.dumps({"id": probe, "name": "ping"}).encode(), qos=1).wait_for_publish(10)
    wait_for(lambda: any(m.json()["id"] == probe for m in acks.on("edge/default/fuzz/ack")),
             20, "the probe's ack: the command thread must still be alive")
    answers = [m.json() for m in acks.on("edge/default/fuzz/ack")[before:]]
    assert answers[-1]["ok"] is True
    for a in answers[:-1]:
        assert a["ok"] or ("Traceback" not in a["error"] and a["error"])
    alive = [t.name for t in threading.enumerate() if t.name.startswith("sync-cmd-fuzz")]
    assert alive, "the command thread died"
