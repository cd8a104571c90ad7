"""The fleet tool under faults: the broker restarted under `deploy --wait`, two edge-fleet runs
sharing one --state file, and a newer deployment overtaking a rollout still running. Real
Mosquitto, real signed bundles, real `edge-run --store` devices."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from synctest_broker import MOSQUITTO, wait_for

from sync.rollout import RolloutStore
from tests.fleet.fleet_helpers import (
    ROOT,
    deploy_stalled_at_canary,
    frames_folder,
    make_keys,
    retained_topics,
    rollouts_on_file,
    signed_bundle,
    start_device,
    stop,
)
from tests.fleet.test_rollout import Background, Reports, edge_fleet


def test_deploy_wait_follows_the_fleet_across_a_broker_restart(tmp_path: Path, broker) -> None:
    """The device comes online only after the broker restarted: `deploy --wait` must still
    hear it (its subscription is renewed on reconnect) and end with the device healthy."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    state = tmp_path / "r.json"
    deploy = Background("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                        "--wait", "--timeout", "60", "--state", str(state))
    wait_for(lambda: rollouts_on_file(state), 180, "the rollout recorded")
    broker.restart()
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
    try:
        code, out, err = deploy.join(300)
        assert code == 0, out + err
        assert reports.version("cam") == 2 and "healthy" in out, out
    finally:
        stop(proc)
        reports.close()


def test_a_deploy_during_another_deploy_wait_keeps_both_rollouts(tmp_path: Path, broker) -> None:
    """`deploy --wait` saved the list it loaded at its start over the file, so a rollout
    recorded meanwhile by a second `deploy` vanished from --state (its device still got it)."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    state = tmp_path / "r.json"
    reports = Reports(broker.port)
    deploy = Background("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                        "--wait", "--timeout", "120", "--state", str(state))
    proc = None
    try:
        wait_for(lambda: rollouts_on_file(state), 180, "the first rollout recorded")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device",
                                    "cam-away", "--state", str(state))
        assert code == 0, out + err
        proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
        code, out, err = deploy.join(300)
        assert code == 0 and reports.version("cam") == 2, out + err
        devices = [sorted(r["devices"]) for r in rollouts_on_file(state)]
        assert devices == [["cam"], ["cam-away"]], devices
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert code == 0 and "cam-away" in out, out + err
    finally:
        if proc is not None:
            stop(proc)
        reports.close()


def test_an_older_rollout_never_overwrites_a_newer_downgrade(tmp_path: Path, broker) -> None:
    """v3 rolls out (canary cam-1, then cam-2); the operator downgrades both to v2 with a new
    rollout. The v3 rollout, still running, used to release its next wave as soon as cam-1
    went offline: its v3 replaced the v2 deployment on cam-2's topic and cam-2 ended on v3."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    v3 = signed_bundle(tmp_path / "v3", private, 3, seed=3)
    frames = frames_folder(tmp_path / "frames")
    state = tmp_path / "r.json"
    reports = Reports(broker.port)
    two = ("--device", "cam-1", "--device", "cam-2", "--canary", "1", "--wave", "1",
           "--state", str(state))
    procs = [start_device(tmp_path / "cam-1", frames, broker.url, "cam-1", trust=public,
                          seed=v1)]

    def rollouts() -> list[dict]:
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert code == 0, out + err
        return rollouts_on_file(state)

    try:
        wait_for(lambda: reports.version("cam-1") == 1, 180, "cam-1 on v1")
        assert edge_fleet("--broker", broker.url, "deploy", str(v3), *two)[0] == 0
        wait_for(lambda: reports.version("cam-1") == 3, 180, "the v3 canary")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), *two,
                                    "--allow-downgrade")
        assert code == 0 and "hands over 2 device(s) to this one and stops" in out, out + err
        wait_for(lambda: reports.version("cam-1") == 2, 180, "cam-1 downgraded to v2")
        wait_for(lambda: rollouts()[1]["released"] == 2, 180, "the v2 rollout's second wave")
        stop(procs.pop())
        wait_for(lambda: rollouts()[1]["devices"]["cam-1"]["state"] == "healthy" and
                 rollouts()[0]["devices"]["cam-1"]["state"] in ("offline", "superseded"), 180,
                 "cam-1 seen offline")
        older = rollouts()[0]
        assert older["status"] == "superseded", older
        assert {e["state"] for e in older["devices"].values()} == {"superseded"}, older
        procs.append(start_device(tmp_path / "cam-2", frames, broker.url, "cam-2", trust=public,
                                  seed=v1))
        wait_for(lambda: reports.state("cam-2") == "healthy", 180, "cam-2 done")
        assert reports.version("cam-2") == 2, reports.latest["cam-2"]
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert "SUPERSEDED: superseded by rollout" in out, out
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_ctrl_c_while_the_canary_is_published_leaves_the_rollout_recorded(tmp_path: Path) -> None:
    """The broker stalls while `deploy` publishes the canary's deployment and the operator
    presses Ctrl-C: the rollout was already in --state (it used to be saved only after the
    publish, so the device could run a rollout no state file knew), and `edge-fleet rollouts`
    shows it and publishes the canary again."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found")
    with deploy_stalled_at_canary(tmp_path) as (broker, state, proc):
        assert rollouts_on_file(state)[0]["released"] == 0  # recorded before the canary went out
        proc.send_signal(signal.SIGINT)
        broker.resume()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert f"interrupted; `edge-fleet rollouts --state {state}`" in err, err
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert code == 0 and "tiny v2  RUNNING" in out and "cam" in out, out + err
        assert retained_topics(broker.port, "edge/default/cam/deploy"), "canary not published"


def test_a_deploy_publishing_its_canary_does_not_hold_the_state_file(tmp_path: Path) -> None:
    """The broker stalls while `deploy` publishes the canary: another edge-fleet run sharing
    --state gets the file at once (it used to wait while the deploy held the lock for as long
    as the broker took, up to a minute), and sees the rollout recorded, canary not yet out;
    once the broker answers, the deploy records the canary as released."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found")
    with deploy_stalled_at_canary(tmp_path) as (broker, state, proc):
        with RolloutStore(state).locked() as rollouts:  # what a second edge-fleet run does
            assert [r["released"] for r in rollouts] == [0], rollouts
            assert proc.poll() is None  # the deploy is still publishing
        broker.resume()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        assert [r["released"] for r in rollouts_on_file(state)] == [1]
        assert rollouts_on_file(state)[0]["devices"]["cam"]["state"] in ("queued", "offline")
        assert retained_topics(broker.port, "edge/default/cam/deploy"), "canary not published"


def test_rollouts_follows_a_device_that_takes_a_finished_rollout_later(tmp_path: Path,
                                                                       broker) -> None:
    """Every wave released, the rollout is DONE with its device offline; the device comes
    back and takes it. `edge-fleet rollouts` only looked at running rollouts, so it said
    `offline` for ever."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    state = tmp_path / "r.json"
    reports = Reports(broker.port)
    proc = None
    try:
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device",
                                    "cam", "--state", str(state))
        assert code == 0, out + err
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert "DONE" in out and "offline" in out, out + err
        proc = start_device(tmp_path / "cam", frames_folder(tmp_path / "frames"), broker.url,
                            "cam", trust=public, seed=v1)
        wait_for(lambda: reports.state("cam") == "healthy", 180, "the device on v2")
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert "cam                      healthy" in out, out + err
    finally:
        if proc is not None:
            stop(proc)
        reports.close()


def test_a_canary_that_dies_mid_download_does_not_hold_the_rollout(tmp_path: Path,
                                                                    broker) -> None:
    """The canary is SIGKILLed half-way through its download: its retained report still says
    `downloading`, and the rollout waited on it for ever. It is shown offline now (with what it
    last reported) and, like any offline device, does not hold back the next wave."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2, extra_mb=2.0)
    state = tmp_path / "r.json"
    log = tmp_path / "cam.log"
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames_folder(tmp_path / "frames"), broker.url, "cam",
                        trust=public, seed=v1, log=log, env={"EDGE_DEPLOY_PAUSE": "download"})
    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "the device on v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--device", "cam-b", "--canary", "1", "--wave", "1",
                                    "--state", str(state))
        assert code == 0, out + err
        wait_for(lambda: "paused at download" in log.read_text(), 180, "the download half-way")
        stop(proc)

        def second_wave() -> bool:
            edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
            return rollouts_on_file(state)[0]["released"] == 2

        wait_for(second_wave, 180, "the second wave released")
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert "cam                      offline  (last reported downloading)" in out, out
    finally:
        stop(proc)
        reports.close()


def test_rollouts_piped_into_head_is_not_a_traceback(tmp_path: Path, broker) -> None:
    """`edge-fleet rollouts | head -4` with more rollouts than the pipe holds: head closes
    the pipe early and edge-fleet ended on a BrokenPipeError traceback."""
    state = tmp_path / "r.json"
    state.write_text(json.dumps({"rollouts": [
        {"id": f"tiny-v{i}-x", "name": "tiny", "version": i, "blob": {}, "url": None,
         "group": None, "canary": 1, "wave": 1, "max_failures": 0, "allow_downgrade": False,
         "gate": {}, "status": "halted", "reason": "r" * 200, "stages": [["cam"]],
         "released": 1, "devices": {"cam": {"state": "rolled_back", "reason": "NaN"}}}
        for i in range(2000)]}))
    proc = subprocess.Popen([sys.executable, "-m", "sync.fleet", "--broker", broker.url,
                             "rollouts", "--state", str(state)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does once it has its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_a_new_deploy_takes_over_the_unfinished_devices_of_a_finished_rollout(
        tmp_path: Path, broker) -> None:
    """v2's last wave went out while cam was offline (DONE, cam offline); the operator then
    deploys v3 to cam. The v2 rollout used to follow cam for ever (offline, then queued once
    it is back on v3); cam is handed over to the v3 rollout instead."""
    private, _ = make_keys(tmp_path / "keys")
    state = tmp_path / "r.json"
    for version in (2, 3):
        bundle = signed_bundle(tmp_path / f"v{version}", private, version, seed=version)
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(bundle), "--device",
                                    "cam", "--state", str(state))
        assert code == 0, out + err
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
    older, newer = rollouts_on_file(state)
    assert older["status"] == "done" and older["devices"]["cam"]["state"] == "superseded", older
    assert newer["devices"]["cam"]["state"] == "offline", newer
    assert "superseded  (superseded by rollout" in out, out
