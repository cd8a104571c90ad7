"""Rollouts end to end: real Mosquitto, real signed bundles, real `edge-run --store` devices."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import wait_for

from edge_sdk.hashing import sha256_file
from optimize.signing import sign
from sync import fleet
from tests.fleet.fleet_helpers import (
    frames_folder,
    make_bundle,
    make_keys,
    signed_bundle,
    start_device,
    stop,
)


class Reports:
    """The devices' retained deployment reports, as the fleet sees them."""

    def __init__(self, port: int) -> None:
        self.latest: dict[str, dict] = {}
        self.history: list[tuple[str, dict]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edge/default/+/deployment", qos=1)
        self.client.loop_start()

    def _on_message(self, c, u, msg) -> None:
        if msg.payload:
            device, body = msg.topic.split("/")[2], json.loads(msg.payload)
            self.latest[device] = body
            self.history.append((device, body))

    def state(self, device: str) -> str | None:
        return self.latest.get(device, {}).get("state")

    def version(self, device: str) -> int | None:
        active = self.latest.get(device, {}).get("active") or {}
        return active.get("version")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def edge_fleet(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fleet.main(list(argv))
    return code, out.getvalue(), err.getvalue()


class Background:
    """`edge-fleet ...` run in a thread (e.g. `deploy --wait` while devices come and go)."""

    def __init__(self, *argv: str) -> None:
        self.result: tuple[int, str, str] | None = None
        self.thread = threading.Thread(target=self._run, args=argv, daemon=True)
        self.thread.start()

    def _run(self, *argv: str) -> None:
        self.result = edge_fleet(*argv)

    def join(self, timeout: float) -> tuple[int, str, str]:
        self.thread.join(timeout)
        assert self.result is not None, "edge-fleet did not finish"
        return self.result


def test_rollout_reaches_devices_and_one_that_comes_online_later(tmp_path: Path, broker) -> None:
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    names = ["cam-1", "cam-2", "cam-3"]
    procs = [start_device(tmp_path / n, frames, broker.url, n, trust=public, seed=v1)
             for n in names]
    try:
        wait_for(lambda: all(reports.version(n) == 1 for n in names), 180, "devices on v1")
        state = tmp_path / "rollouts.json"
        deploy = Background("--broker", broker.url, "deploy", str(v2), *sum(
            (["--device", n] for n in [*names, "cam-late"]), []), "--canary", "1", "--wave",
            "2", "--wait", "--timeout", "300", "--state", str(state))
        wait_for(lambda: all(reports.version(n) == 2 for n in names), 180, "3 devices on v2")
        for n in names:
            assert reports.state(n) == "healthy", reports.latest[n]
        code, out, _ = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert code == 0 and "cam-late" in out and "offline" in out, out
        procs.append(start_device(tmp_path / "cam-late", frames, broker.url, "cam-late",
                                  trust=public, seed=v1))
        code, out, err = deploy.join(400)
        assert code == 0, out + err
        assert reports.state("cam-late") == "healthy" and reports.version("cam-late") == 2
        assert out.count("healthy") == 4, out
        # the retained status carries the active model (republished when it changes)
        wait_for(lambda: edge_fleet("--broker", broker.url, "devices")[1].count("tiny v2") == 4,
                 180, "edge-fleet devices showing v2 on every device")
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_group_rollout_reaches_a_device_that_joins_later(tmp_path: Path, broker) -> None:
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    first = start_device(tmp_path / "a", frames, broker.url, "lobby-1", trust=public, seed=v1,
                         groups=("lobby",))
    other = start_device(tmp_path / "b", frames, broker.url, "garage-1", trust=public, seed=v1,
                         groups=("garage",))
    procs = [first, other]
    try:
        wait_for(lambda: reports.version("lobby-1") == 1 and reports.version("garage-1") == 1,
                 180, "devices on v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--group",
                                    "lobby", "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 0, out + err
        # --wait's progress: a line on stderr per change, so a log shows the rollout moving
        moves = [line for line in err.splitlines() if line.startswith("edge-fleet: rollout ")]
        assert len(moves) >= 2 and " running, " in moves[0], err
        assert " done, " in moves[-1] and moves[-1].endswith(" released: 1 healthy"), err
        assert reports.version("lobby-1") == 2 and reports.version("garage-1") == 1
        procs.append(start_device(tmp_path / "c", frames, broker.url, "lobby-2", trust=public,
                                  seed=v1, groups=("lobby",)))
        wait_for(lambda: reports.version("lobby-2") == 2, 180, "the new lobby device on v2")
        assert reports.state("lobby-2") == "healthy"
        assert reports.version("garage-1") == 1
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_canary_failing_the_gate_rolls_back_and_halts(tmp_path: Path, broker) -> None:
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    bad = signed_bundle(tmp_path / "nan", private, 2, nan=True)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    procs = [start_device(tmp_path / n, frames, broker.url, n, trust=public, seed=v1)
             for n in ("cam-1", "cam-2")]
    try:
        wait_for(lambda: all(reports.version(n) == 1 for n in ("cam-1", "cam-2")), 180, "v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(bad), "--device",
                                    "cam-1", "--device", "cam-2", "--canary", "1", "--wait",
                                    "--timeout", "300", "--state", str(tmp_path / "r.json"))
        assert code == 1, out + err
        assert "halted" in err and "non-finite" in err
        assert reports.state("cam-1") == "rolled_back" and reports.version("cam-1") == 1
        assert "NaN" in reports.latest["cam-1"]["reason"]
        assert reports.version("cam-2") == 1 and reports.state("cam-2") != "healthy"
        time.sleep(1.0)  # the device keeps inferring on v1: the process did not die
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_wrong_key_and_downgrade_are_refused(tmp_path: Path, broker) -> None:
    private, public = make_keys(tmp_path / "keys")
    other, _ = make_keys(tmp_path / "keys", "other")
    v1 = signed_bundle(tmp_path / "v1", private, 5, seed=1)
    forged = signed_bundle(tmp_path / "forged", other, 6, seed=2)
    older = signed_bundle(tmp_path / "older", private, 4, seed=3)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
    try:
        wait_for(lambda: reports.version("cam") == 5, 180, "v5")
        # garbage on the device's deployment topic: counted and reported apart (the state of
        # the last deployment is left as it was), skipped; it keeps running
        state_before = reports.state("cam")
        reports.client.publish("edge/default/cam/deploy", b'{"id": "x", "blob": [', qos=1,
                               retain=True).wait_for_publish(10)
        wait_for(lambda: reports.latest["cam"].get("malformed") == 1, 180, "the refusal")
        assert "malformed deployment" in reports.latest["cam"]["malformed_reason"]
        assert reports.state("cam") == state_before
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(make_bundle(
            tmp_path / "unsigned")), "--device", "cam", "--state", str(tmp_path / "r.json"))
        assert code == 2 and "not signed" in err and len(err.strip().splitlines()) == 1
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(forged), "--device",
                                    "cam", "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 1 and reports.state("cam") == "refused"
        assert "signed by key" in reports.latest["cam"]["reason"]
        broken = make_bundle(tmp_path / "broken")  # signed, hashes right, model unloadable
        (broken / "model.onnx").write_bytes(b"not a model")
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["files"]["model"]["sha256"] = sha256_file(broken / "model.onnx")
        (broken / "manifest.json").write_text(json.dumps(manifest))
        sign(broken, private, version=7, name="tiny")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(broken), "--device",
                                    "cam", "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 1 and reports.state("cam") == "failed"
        assert "does not load" in reports.latest["cam"]["reason"]
        assert reports.version("cam") == 5 and proc.poll() is None  # the old model runs on
        slow = signed_bundle(tmp_path / "slow", private, 8, seed=4)  # its gate never ends
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(slow), "--device",
                                    "cam", "--gate-frames", "100000", "--gate-timeout", "2",
                                    "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 1 and reports.state("cam") == "rolled_back"
        assert reports.latest["cam"]["reason"].startswith("timeout: the health gate saw")
        assert reports.version("cam") == 5 and proc.poll() is None
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(older), "--device",
                                    "cam", "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 1 and "downgrade" in reports.latest["cam"]["reason"]
        assert reports.version("cam") == 5
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(older), "--device",
                                    "cam", "--allow-downgrade", "--wait", "--timeout", "300",
                                    "--state", str(tmp_path / "r.json"))
        assert code == 0, out + err
        assert reports.version("cam") == 4 and reports.state("cam") == "healthy"
    finally:
        stop(proc)
        reports.close()


def test_rollout_state_outlives_the_fleet_tool(tmp_path: Path, broker) -> None:
    """`deploy` without --wait releases the canary and exits; later `rollouts` calls (new
    invocations, only the state file in common) release the next wave and finish it."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    names = ("cam-1", "cam-2")
    procs = [start_device(tmp_path / n, frames, broker.url, n, trust=public, seed=v1)
             for n in names]
    state = tmp_path / "state.json"
    try:
        wait_for(lambda: all(reports.version(n) == 1 for n in names), 180, "v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device",
                                    "cam-1", "--device", "cam-2", "--canary", "1", "--wave", "1",
                                    "--state", str(state))
        assert code == 0, out + err
        wait_for(lambda: reports.version("cam-1") == 2, 180, "the canary on v2")
        assert reports.version("cam-2") == 1  # the next wave waits for a fleet tool
        wait_for(lambda: "cam-2" in edge_fleet("--broker", broker.url, "rollouts", "--state",
                                               str(state))[1] and reports.state("cam-2") in (
            "queued", "downloading", "verifying", "activating", "healthy"), 180,
            "a later `edge-fleet rollouts` releasing the second wave")
        wait_for(lambda: reports.version("cam-2") == 2, 180, "the second wave on v2")
        wait_for(lambda: "DONE" in edge_fleet("--broker", broker.url, "rollouts", "--state",
                                              str(state))[1], 180, "the rollout done")
        assert json.loads(state.read_text())["rollouts"][0]["status"] == "done"
    finally:
        for p in procs:
            stop(p)
        reports.close()
