"""`edge-fleet rollouts cancel`: a rollout stopped for good. Real Mosquitto, real signed
bundles, real `edge-run --store` devices."""

from __future__ import annotations

from pathlib import Path

import pytest
from synctest_broker import MOSQUITTO, wait_for

from sync import rollout as ro
from tests.fleet.fleet_helpers import (
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


def test_cancel_stops_the_waves_and_deploy_wait_says_so(tmp_path: Path, broker) -> None:
    """Canary cam-1 is healthy, wave 2's cam-2 is on trial (a slow camera: its health gate
    takes minutes), cam-3 waits for wave 3. Cancelled: cam-3 is never told, cam-2's
    deployment is taken back, cam-1 keeps the new model; `deploy --wait` ends non-zero."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    names = ("cam-1", "cam-2", "cam-3")
    procs = [start_device(tmp_path / n, frames, broker.url, n, trust=public, seed=v1,
                          fps=0.1 if n == "cam-2" else 30.0) for n in names]
    state = tmp_path / "rollouts.json"
    try:
        wait_for(lambda: all(reports.version(n) == 1 for n in names), 180, "devices on v1")
        deploy = Background("--broker", broker.url, "deploy", str(v2), *sum(
            (["--device", n] for n in names), []), "--canary", "1", "--wave", "1",
            "--gate-timeout", "3600", "--wait", "--timeout", "600", "--state", str(state))
        wait_for(lambda: reports.version("cam-1") == 2, 180, "the canary on v2")
        wait_for(lambda: reports.state("cam-2") == "activating", 180, "cam-2 on trial")
        rollout_id = rollouts_on_file(state)[0]["id"]
        assert reports.latest["cam-2"]["id"] == rollout_id
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", rollout_id,
                                    "--state", str(state))
        assert code == 0, out + err
        assert "cancelled: 1 device(s) will not get it" in out, out
        assert "still finishing" in out and "cam-2" in out, out
        assert "1 device(s) keep v2: cam-1" in out, out
        code, out, err = deploy.join(120)
        assert code == 1, out + err
        assert "rollout cancelled" in err, err
        assert retained_topics(broker.port, "edge/default/cam-3/deploy") == []  # never told
        assert retained_topics(broker.port, "edge/default/cam-2/deploy") == []  # taken back
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert code == 0 and "CANCELLED" in out, out + err
        devices = rollouts_on_file(state)[0]["devices"]
        assert devices["cam-1"]["state"] == "healthy" and devices["cam-3"]["state"] == "cancelled"
        assert retained_topics(broker.port, "edge/default/cam-3/deploy") == []  # still never
        assert reports.version("cam-1") == 2 and reports.version("cam-3") == 1
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", rollout_id,
                                    "--state", str(state))
        assert code == 2 and "already cancelled" in err and len(err.strip().splitlines()) == 1, err
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", "nope",
                                    "--state", str(state))
        assert code == 2 and "no rollout 'nope'" in err, err
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_a_rollout_cancelled_while_its_canary_is_published_takes_it_back(tmp_path: Path) -> None:
    """The broker stalls while `deploy` publishes the canary, and meanwhile another run cancels
    the rollout (released nothing yet, so it publishes nothing): when the broker answers, the
    deploy keeps the cancellation and takes back the canary it had just put out."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found")
    with deploy_stalled_at_canary(tmp_path) as (broker, state, proc):

        def nothing_to_publish(topic: str, payload: bytes, retain: bool) -> None:
            raise AssertionError(f"cancel published to {topic} before any wave went out")

        with ro.RolloutStore(state).locked() as rollouts:
            ro.cancel(rollouts[0], {}, {}, nothing_to_publish, "default", "changed our mind")
        broker.resume()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        [rollout] = rollouts_on_file(state)
        assert rollout["status"] == "cancelled" and rollout["released"] == 0
        assert rollout["devices"]["cam"]["state"] == "cancelled"
        assert retained_topics(broker.port, "edge/default/cam/deploy") == []


def test_cancelling_a_finished_rollout_takes_back_what_offline_devices_have_not_taken(
        tmp_path: Path, broker) -> None:
    """Every wave is out and the rollout is DONE, but cam-2 was offline: its retained
    deployment waited for it, so cancelling was refused and cam-2 took v2 when it came back.
    Cancel now takes cam-2's deployment back, says cam-1 keeps v2 and how to go back."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    state = tmp_path / "rollouts.json"
    procs = [start_device(tmp_path / "cam-1", frames, broker.url, "cam-1", trust=public, seed=v1)]
    try:
        wait_for(lambda: reports.version("cam-1") == 1, 180, "cam-1 on v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device",
                                    "cam-1", "--device", "cam-2", "--canary", "1", "--wave", "1",
                                    "--state", str(state))
        assert code == 0, out + err
        rollout_id = rollouts_on_file(state)[0]["id"]
        wait_for(lambda: reports.state("cam-1") == "healthy", 180, "the canary on v2")
        for _ in range(2):  # wave 2 goes to the offline cam-2, then the rollout is done
            code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
            assert code == 0, out + err
        assert "DONE" in out and "cam-2                    offline" in out, out
        assert retained_topics(broker.port, "edge/default/cam-2/deploy")
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", rollout_id,
                                    "--state", str(state))
        assert code == 0, out + err
        assert "cancelled (it was done): 1 device(s) will not get it" in out, out
        assert ("1 device(s) keep v2: cam-1; to go back, deploy the previous bundle with "
                "--allow-downgrade") in out, out
        assert retained_topics(broker.port, "edge/default/cam-2/deploy") == []
        assert retained_topics(broker.port, "edge/default/cam-1/deploy")  # it runs v2
        procs.append(start_device(tmp_path / "cam-2", frames, broker.url, "cam-2", trust=public,
                                  seed=v1))
        wait_for(lambda: reports.version("cam-2") == 1, 180, "cam-2 back online")
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "--state", str(state))
        assert "CANCELLED" in out and "cam-2                    cancelled" in out, out + err
        assert "cam-1                    healthy" in out, out
        assert reports.latest["cam-2"].get("id") != rollout_id and reports.version("cam-2") == 1
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", rollout_id,
                                    "--state", str(state))
        assert code == 2 and "already cancelled" in err, err
    finally:
        for p in procs:
            stop(p)
        reports.close()


def test_cancelling_a_done_group_rollout_gives_the_group_its_previous_model(
        tmp_path: Path, broker) -> None:
    """A done group rollout leaves its deployment on the group topic for devices that join
    later. Cancelling v3 gives the group topic back to v2 (a camera joining then gets v2);
    cancelling v2 clears it."""
    private, public = make_keys(tmp_path / "keys")
    bundles = {v: signed_bundle(tmp_path / f"v{v}", private, v, seed=v) for v in (1, 2, 3)}
    state = tmp_path / "rollouts.json"
    ids = {}
    for v in (2, 3):  # no member online yet: each is done at once
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(bundles[v]),
                                    "--group", "lobby", "--state", str(state))
        assert code == 0, out + err
        ids[v] = rollouts_on_file(state)[-1]["id"]
    assert [r["status"] for r in rollouts_on_file(state)] == ["done", "done"]
    code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", ids[3],
                                "--state", str(state))
    assert code == 0, out + err
    assert f"devices that join group lobby later get tiny v2 (rollout {ids[2]})" in out, out
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames_folder(tmp_path / "frames"), broker.url, "cam",
                        trust=public, seed=bundles[1], groups=("lobby",))
    try:
        wait_for(lambda: reports.version("cam") == 2, 180, "the new member on v2")
        code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", ids[2],
                                    "--state", str(state))
        assert code == 0, out + err
        assert "devices that join group lobby later no longer get it" in out, out
        assert retained_topics(broker.port, "edge/default/@lobby/deploy") == []
    finally:
        stop(proc)
        reports.close()


def test_a_rollout_every_device_finished_is_not_cancelled_and_says_how_to_go_back(
        tmp_path: Path, broker) -> None:
    """Nothing is out any more: refused in one line naming the devices on it and the way back."""
    state = tmp_path / "rollouts.json"
    rollout = ro.new_rollout(name="tiny", version=2, blob={}, url=None, devices=["cam-1", "cam-2"],
                             group=None, canary=1, wave=1, max_failures=0, allow_downgrade=False,
                             gate={}, bundle="v2")
    rollout.update(status="done", released=2, devices={"cam-1": {"state": "healthy"},
                                                        "cam-2": {"state": "rolled_back"}})
    ro.RolloutStore(state).save([rollout])
    code, out, err = edge_fleet("--broker", broker.url, "rollouts", "cancel", rollout["id"],
                                "--state", str(state))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is done and no deployment of it is left to take back (1 device(s) run v2: cam-1)" \
        in err, err
    assert "deploy the previous bundle with --allow-downgrade" in err, err
    assert rollouts_on_file(state)[0]["status"] == "done"
