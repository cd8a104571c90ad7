"""Two edge-fleet runs on one --state file while the broker stalls: a run publishing a wave,
a halt or a cancellation does not hold the state file meanwhile (it used to, for as long as
the broker took), and what it decided is recorded once the broker has it. Real Mosquitto,
real edge-fleet processes; the devices stay offline (an offline canary lets the next wave go)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from synctest_broker import MOSQUITTO, Broker

from sync.rollout import RolloutStore
from tests.fleet.fleet_helpers import (
    fleet_run_stalled_at_publish,
    make_keys,
    retained_topics,
    rollouts_on_file,
    signed_bundle,
)
from tests.fleet.test_rollout import edge_fleet


@pytest.fixture
def logged_broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found")
    (tmp_path / "broker").mkdir()
    log = tmp_path / "broker" / "subscribe.log"  # a file log is flushed line by line
    broker = Broker(tmp_path / "broker", extra=f"log_type subscribe\nlog_dest file {log}").start()
    yield broker
    broker.stop()


def _deployed(tmp_path: Path, broker: Broker) -> tuple[Path, str]:
    """A rollout of v2 to cam-a (canary, published) then cam-b; both offline."""
    private, _ = make_keys(tmp_path / "keys")
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    state = tmp_path / "r.json"
    code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam-a",
                                "--device", "cam-b", "--canary", "1", "--wave", "1", "--url",
                                "http://127.0.0.1:9/m.tar", "--state", str(state))
    assert code == 0, out + err
    [rollout] = rollouts_on_file(state)
    assert rollout["released"] == 1
    return state, rollout["id"]


def _state_file_free(state: Path) -> list[dict]:
    """What a second edge-fleet run does first: take the state file (the test fails, rather
    than hangs, if that waits beyond the stalled run's broker wait)."""
    got: list[list[dict]] = []

    def take() -> None:
        with RolloutStore(state).locked() as rollouts:
            got.append(list(rollouts))

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(120)
    assert got, "the state file stayed locked"
    return got[0]


def test_rollouts_releasing_a_wave_does_not_hold_the_state_file(tmp_path: Path,
                                                                logged_broker: Broker) -> None:
    state, _ = _deployed(tmp_path, logged_broker)
    with fleet_run_stalled_at_publish(tmp_path, logged_broker, "rollouts", "--state",
                                      str(state)) as proc:
        [rollout] = _state_file_free(state)
        assert proc.poll() is None, proc.communicate()  # still publishing wave 2
        assert rollout["released"] == 1  # recorded only once the broker has it
        logged_broker.resume()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    [rollout] = rollouts_on_file(state)
    assert rollout["released"] == 2 and rollout["status"] == "running", rollout
    assert retained_topics(logged_broker.port, "edge/default/cam-b/deploy")


def test_cancel_taking_deployments_back_does_not_hold_the_state_file(
        tmp_path: Path, logged_broker: Broker) -> None:
    state, rollout_id = _deployed(tmp_path, logged_broker)
    with fleet_run_stalled_at_publish(tmp_path, logged_broker, "rollouts", "cancel",
                                      rollout_id, "--state", str(state)) as proc:
        [rollout] = _state_file_free(state)
        assert proc.poll() is None, proc.communicate()  # still taking cam-a's deployment back
        assert rollout["status"] == "running"
        logged_broker.resume()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "cancelled: 2 device(s) will not get it" in out, out
    [rollout] = rollouts_on_file(state)
    assert rollout["status"] == "cancelled" and rollout["released"] == 1
    assert {d: e["state"] for d, e in rollout["devices"].items()} == {
        "cam-a": "cancelled", "cam-b": "cancelled"}
    assert retained_topics(logged_broker.port, "edge/default/+/deploy") == []


def test_a_cancel_while_rollouts_publishes_a_wave_takes_that_wave_back(
        tmp_path: Path, logged_broker: Broker) -> None:
    """`rollouts` decided to release wave 2 and waits for the broker; meanwhile the rollout is
    cancelled (the cancelling run's own publish done before it). Once the broker answers,
    `rollouts` keeps the cancellation and clears the wave it had just put out."""
    state, rollout_id = _deployed(tmp_path, logged_broker)
    with fleet_run_stalled_at_publish(tmp_path, logged_broker, "rollouts", "--state",
                                      str(state)) as proc:
        with RolloutStore(state).locked() as rollouts:  # cancelled by another run
            rollouts[0]["status"], rollouts[0]["reason"] = "cancelled", "changed our mind"
            rollouts[0]["devices"] = {"cam-a": {"state": "cancelled"},
                                      "cam-b": {"state": "cancelled"}}
        logged_broker.resume()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    [rollout] = rollouts_on_file(state)
    assert rollout["status"] == "cancelled" and rollout["released"] == 1, rollout
    assert retained_topics(logged_broker.port, "edge/default/cam-b/deploy") == []


def test_ctrl_c_while_cancel_takes_deployments_back_says_to_cancel_again(
        tmp_path: Path, logged_broker: Broker) -> None:
    """A cancel is recorded once the broker has its take-backs: interrupted before, the rollout
    still runs, and the message said `edge-fleet rollouts` 'continues the rollouts'."""
    state, rollout_id = _deployed(tmp_path, logged_broker)
    with fleet_run_stalled_at_publish(tmp_path, logged_broker, "rollouts", "cancel",
                                      rollout_id, "--state", str(state)) as proc:
        proc.send_signal(signal.SIGINT)
        logged_broker.resume()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (f"the rollout may not be cancelled: run `edge-fleet rollouts cancel {rollout_id} "
            f"--state {state}` again") in err, err
    assert rollouts_on_file(state)[0]["status"] == "running"
    code, out, err = edge_fleet("--broker", logged_broker.url, "rollouts", "cancel", rollout_id,
                                "--state", str(state))
    assert code == 0 and "cancelled" in out, out + err
    assert retained_topics(logged_broker.port, "edge/default/+/deploy") == []
