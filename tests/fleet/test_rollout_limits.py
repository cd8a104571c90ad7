"""Limits of a rollout (review of issue 11): bounded downloads, disk space, size caps,
untrusted fleet-side messages, the done list, the fallback slot, one-line CLI mistakes."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from synctest_broker import wait_for

import edge_sdk
from edge_sdk import store_run
from edge_sdk.deploy_agent import DeployAgent, Deployment, DoneList, unsigned_identity
from edge_sdk.hotswap import SwappableModel
from edge_sdk.store import Store
from edge_sdk.trust import SignatureError, read_identity
from sync import transfer
from sync.errors import SyncError
from tests.fleet.fleet_helpers import make_bundle, make_keys, retained_topics, signed_bundle
from tests.fleet.test_rollout import Reports, edge_fleet


def test_installing_over_the_fallback_slot_forgets_it(tmp_path: Path) -> None:
    private, _ = make_keys(tmp_path / "keys")
    store = Store(tmp_path / "store")
    v1, v2, v3 = (signed_bundle(tmp_path / f"v{v}", private, v, seed=v) for v in (1, 2, 3))
    store.seed(v1, read_identity(v1))
    for bundle in (v2, v3):
        staged = tmp_path / f"staged-{bundle.name}"
        shutil.copytree(bundle, staged)
        slot = store.install(staged)
        if bundle is v2:  # v2 activated and confirmed: v1's slot is the fallback
            store.activate(slot, read_identity(bundle), trial=None)
            assert store.active().previous_identity["version"] == 1
    # v3 went into v1's slot (say it then fails to load): the pointer must not offer "v1" there
    record = store.active()
    assert record.identity["version"] == 2 and slot != record.slot
    assert record.previous is None and record.previous_identity is None
    assert store.rollback("test").identity["version"] == 2  # nothing stale to go back to


def test_the_done_list_keeps_the_newest_ids_in_order(tmp_path: Path) -> None:
    done = DoneList()
    done.add("z-oldest")  # alphabetically last, but the first to finish
    for i in range(200):
        done.add(f"a-{i:03d}")
    again = DoneList(json.loads(json.dumps(done.to_list())))  # as persisted and read back
    assert "z-oldest" not in again
    assert all(f"a-{i:03d}" in again for i in range(200))
    again.add("a-000")  # seen again: it becomes the newest
    again.add("b-new")
    assert "a-001" not in again and "a-000" in again and again.to_list()[-1] == "b-new"


def test_blob_size_and_chunk_requests_are_bounded() -> None:
    sha = "ab" * 32
    huge = {"sha256": sha, "size": 5 << 30, "chunk_size": 16 << 20, "chunks": [sha] * 320}
    with pytest.raises(transfer.PayloadError, match="between 1 and"):
        transfer.BlobPlan.from_dict(huge)  # 5 GB: 320 chunks of 16 MB, over the 4 GB cap
    ok = {**huge, "size": 3 << 30, "chunks": [sha] * 192}
    assert transfer.BlobPlan.from_dict(ok).size == 3 << 30
    good = json.dumps({"blob": sha, "chunks": [3, 1, 3]}).encode()
    assert transfer.parse_need(good) == (sha, [1, 3])
    for bad in [b'{"blob": "%s", "chunks": [1e400]}' % sha.encode(),
                json.dumps({"blob": sha, "chunks": [True]}).encode(),
                json.dumps({"blob": sha, "chunks": [-1]}).encode(),
                json.dumps({"blob": sha, "chunks": [10**30]}).encode(),
                json.dumps({"blob": sha, "chunks": list(range(65))}).encode(),
                json.dumps({"blob": sha, "chunks": []}).encode(),
                json.dumps({"blob": 5, "chunks": [1]}).encode(),
                json.dumps([1, 2]).encode(), b"\xff", b"[" * 100000]:
        assert transfer.parse_need(bad) is None, bad[:60]


def test_edge_run_store_mistakes_are_one_line_before_the_store_is_touched(
        tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    base = ["--store", str(store), "--source", str(tmp_path)]
    cases = [
        (["--mqtt", "bogus://x", "--device-id", "cam"], "mqtt://"),
        (["--mqtt", "mqtt://127.0.0.1:1", "--device-id", "bad id/#"], "bad id/#"),
        (["--mqtt", "mqtt://127.0.0.1:1", "--device-id", "cam", "--source", "0"],
         "2 --source flags"),
    ]
    for extra, expected in cases:
        assert store_run.main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edge-run: error: ") and expected in err[0], err
        assert not store.exists()


def test_deploy_mistakes_publish_nothing(tmp_path: Path, broker) -> None:
    private, _ = make_keys(tmp_path / "keys")
    v2 = signed_bundle(tmp_path / "v2", private, 2)
    state = str(tmp_path / "r.json")
    cases = [
        ([str(v2)], "name the devices"),
        ([str(v2), "--device", "cam/#"], "--device 'cam/#'"),
        ([str(v2), "--group", "a+b"], "--group 'a+b'"),
        ([str(v2), "--device", "cam", "--wave", "0"], "--wave >= 1"),
        ([str(v2), "--device", "cam", "--gate-timeout", "0"], "--gate-timeout"),
        ([str(tmp_path / "nonexistent"), "--device", "cam"], "does not exist"),
    ]
    for argv, expected in cases:
        code, out, err = edge_fleet("--broker", broker.url, "deploy", *argv, "--state", state)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert "publishing" not in out
    assert retained_topics(broker.port, "edge/+/_blobs/#") == []
    # the probe can see chunks: a valid deploy leaves them retained
    assert edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam", "--state",
                      state)[0] == 0
    assert retained_topics(broker.port, "edge/+/_blobs/#")


def _agent(tmp_path: Path, broker) -> DeployAgent:
    store = Store(tmp_path / "store")
    v1 = make_bundle(tmp_path / "v1", seed=1)
    store.seed(v1, unsigned_identity(v1))
    model = SwappableModel(edge_sdk.load(store.path(store.active().slot)))
    return DeployAgent(store, model, broker=broker.url, fleet="default", device="cam")


def test_a_download_is_given_up_after_its_attempts_and_a_full_disk_is_said(
        tmp_path: Path, broker) -> None:
    private, _ = make_keys(tmp_path / "keys")
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
    v3 = signed_bundle(tmp_path / "v3", private, 3, seed=3)
    reports = Reports(broker.port)
    agent = _agent(tmp_path, broker)
    agent.download_attempts, agent.first_retry_delay = 3, 0.05
    agent.start()
    try:
        state = str(tmp_path / "r.json")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--url", "http://127.0.0.1:1/v2.tar", "--state", state)
        assert code == 0, out + err
        wait_for(lambda: reports.state("cam") == "failed", 180, "the download given up")
        reason = reports.latest["cam"]["reason"]
        assert "download failed 3 times" in reason and "cannot download" in reason, reason
        agent.disk_reserve = 1 << 60  # more than any disk: the next bundle cannot fit
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v3), "--device", "cam",
                                    "--state", state)
        assert code == 0, out + err
        wait_for(lambda: str(reports.latest["cam"].get("id")).startswith("tiny-v3"), 180,
                 "the v3 report")
        wait_for(lambda: reports.state("cam") == "failed", 180, "v3 refused for disk space")
        assert "not enough disk space" in reports.latest["cam"]["reason"]
        assert not list((tmp_path / "store" / "incoming").iterdir())  # nothing was fetched
        assert reports.version("cam") == 0  # the seeded (unsigned) bundle still active
    finally:
        agent.close()
        reports.close()


def test_gate_timeout_is_validated_and_defaults(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    plan = transfer.plan_blob(transfer.pack_bundle(bundle, tmp_path / "b.tar"))
    good = {"id": "r1", "name": "tiny", "version": 2, "blob": plan.to_dict()}
    assert Deployment.parse(json.dumps(good).encode()).gate.timeout == 300
    with_timeout = {**good, "gate": {"timeout": 2.5}}
    assert Deployment.parse(json.dumps(with_timeout).encode()).gate.timeout == 2.5
    for bad in (0, -1, True, "5", 10**6):
        with pytest.raises(ValueError, match="gate.timeout"):
            Deployment.parse(json.dumps({**good, "gate": {"timeout": bad}}).encode())
    with pytest.raises(ValueError, match="deployment id"):  # "$" would let a newline in
        Deployment.parse(json.dumps({**good, "id": "r1\n"}).encode())
    with pytest.raises(SignatureError, match="model name"):
        Deployment.parse(json.dumps({**good, "name": "tiny\n"}).encode())


def test_gate_numbers_refuse_booleans(tmp_path: Path) -> None:
    """JSON true is a Python int: a gate of {"frames": true} was taken as 1 frame."""
    bundle = make_bundle(tmp_path / "b")
    plan = transfer.plan_blob(transfer.pack_bundle(bundle, tmp_path / "b.tar"))
    good = {"id": "r1", "name": "tiny", "version": 2, "blob": plan.to_dict()}
    for key in ("frames", "max_error_rate", "min_speed_ratio"):
        with pytest.raises(ValueError, match=f"gate.{key}"):
            Deployment.parse(json.dumps({**good, "gate": {key: True}}).encode())


def test_a_download_redirected_off_http_is_refused(tmp_path: Path) -> None:
    """The URL must be http(s); a 302 to ftp:// (or file://) is not followed."""
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:1/v2.tar")
            self.end_headers()

        def log_message(self, *args):
            pass

    bundle = make_bundle(tmp_path / "b")
    plan = transfer.plan_blob(transfer.pack_bundle(bundle, tmp_path / "b.tar"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v2.tar"
        with pytest.raises(SyncError, match="not http"):
            transfer.http_fetch(url, tmp_path / "v2.part", plan, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_deploy_with_an_unwritable_state_publishes_nothing(tmp_path: Path, broker) -> None:
    """Review F7: the canary got the retained deployment, then saving the state failed, so
    nothing recorded the rollout. The state file must be writable before anything is sent."""
    private, _ = make_keys(tmp_path / "keys")
    v2 = signed_bundle(tmp_path / "v2", private, 2)
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a folder no one can create
        state = Path(f"/proc/self/edge-fleet-test-{os.getpid()}/rollouts.json")
    else:
        folder.chmod(0o500)
        state = folder / "rollouts.json"
    try:
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device",
                                    "cam", "--state", str(state))
    finally:
        folder.chmod(0o700)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert f"cannot write rollout state {state}" in line and "pass a writable --state" in line
    assert "publishing" not in out
    assert retained_topics(broker.port, "edge/default/cam/deploy") == []
    assert retained_topics(broker.port, "edge/+/_blobs/#") == []
