"""Which retained deployment wins when several reach a device at once: on a reconnect after
two rollouts its own topic holds v3's canary and its group's topic the completed v2, and the
own topic's message comes first. The device must end on v3, not cancel it for v2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import wait_for

from sync import transfer
from tests.fleet.fleet_helpers import frames_folder, make_keys, signed_bundle, start_device, stop
from tests.fleet.test_rollout import Reports


def _retain_deployment(client, tmp_path: Path, dep_id: str, bundle: Path, version: int,
                       topic: str) -> None:
    """What `edge-fleet deploy` leaves behind: the archive's chunks and the deployment."""
    tar = transfer.pack_bundle(bundle, tmp_path / f"{dep_id}.tar")
    plan = transfer.plan_blob(tar)
    transfer.publish_blob(client, "default", tar, plan)
    body = {"id": dep_id, "name": "tiny", "version": version, "blob": plan.to_dict(),
            "allow_downgrade": False, "gate": {"frames": 10}}
    client.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)


def test_an_older_group_deployment_does_not_cancel_the_devices_newer_one(
        tmp_path: Path, broker) -> None:
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    v3 = signed_bundle(tmp_path / "v3", private, 3, seed=3)
    frames = frames_folder(tmp_path / "frames")
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    # published in this order, so the broker delivers the device's own topic first
    _retain_deployment(client, tmp_path, "group-rollout-v2", v2, 2, "edge/default/@lobby/deploy")
    _retain_deployment(client, tmp_path, "canary-rollout-v3", v3, 3, "edge/default/cam/deploy")
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1,
                        groups=("lobby",), log=tmp_path / "cam.log")
    try:
        wait_for(lambda: reports.version("cam") == 3 and reports.state("cam") == "healthy",
                 180, "the device on v3")
        time.sleep(3)  # nothing older comes after it
        assert reports.version("cam") == 3 and reports.latest["cam"]["id"] == "canary-rollout-v3"
        assert not any(b.get("id") == "canary-rollout-v3" and b.get("state") == "cancelled"
                       for _, b in reports.history), reports.history
        assert not any((b.get("active") or {}).get("version") == 2 for _, b in reports.history)
        assert reports.latest["cam"].get("skipped") == 1
        assert "group-rollout-v2" in reports.latest["cam"]["skipped_reason"]
        # on the next start v2 (retained on the group's topic) is not tried and refused
        stop(proc)
        before = len(reports.history)
        proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public,
                            groups=("lobby",), log=tmp_path / "cam2.log")
        wait_for(lambda: len(reports.history) > before, 180, "the restarted device's report")
        time.sleep(5)  # time to take (and refuse) v2 if it were not done
        assert all(b.get("id") == "canary-rollout-v3" and b.get("state") == "healthy"
                   for _, b in reports.history[before:]), reports.history[before:]
        assert reports.version("cam") == 3
    finally:
        stop(proc)
        reports.close()
        client.loop_stop()
        client.disconnect()


def test_a_device_restarted_mid_deployment_does_not_report_that_step_for_ever(
        tmp_path: Path, broker) -> None:
    """Killed mid-download while the rollout halted and took the deployment back: the device
    restarts to no retained deployment, and must not report 'downloading' for ever."""
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    frames = frames_folder(tmp_path / "frames")
    reports = Reports(broker.port)
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1,
                        log=tmp_path / "cam.log")
    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "the device on v1")
        stop(proc)  # SIGKILL; what its agent had recorded when killed mid-download:
        (tmp_path / "cam" / "deployments.json").write_text(json.dumps(
            {"done": [], "last": {"id": "halted-v2", "state": "downloading", "progress": 0.4}}))
        before = len(reports.history)
        proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public,
                            log=tmp_path / "cam2.log")
        wait_for(lambda: len(reports.history) > before, 180, "the restarted device's report")
        time.sleep(2)
        latest = reports.latest["cam"]
        assert (latest["id"], latest["state"]) == (None, "idle"), latest
        assert "halted-v2" in latest["reason"] and reports.version("cam") == 1
    finally:
        stop(proc)
        reports.close()
