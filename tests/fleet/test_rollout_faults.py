"""Faults during a rollout: SIGKILL while downloading, installing and on trial; a tampered
chunk; a URL download cut in the middle. Real broker, real device processes, real kills."""

from __future__ import annotations

import http.server
import re
import signal
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import wait_for

from edge_sdk.manifest import Manifest
from edge_sdk.store import Store
from sync import transfer
from sync.errors import SyncError
from tests.fleet.fleet_helpers import (
    frames_folder,
    make_keys,
    retained_topics,
    signed_bundle,
    start_device,
    stop,
)
from tests.fleet.test_rollout import Background, Reports, edge_fleet


def _setup(tmp_path: Path, broker, extra_mb: float = 2.0):
    private, public = make_keys(tmp_path / "keys")
    v1 = signed_bundle(tmp_path / "v1", private, 1, seed=1)
    v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2, extra_mb=extra_mb)
    return public, v1, v2, frames_folder(tmp_path / "frames"), Reports(broker.port)


def _paused(log: Path, step: str) -> bool:
    return log.exists() and f"paused at {step}" in log.read_text(errors="replace")


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _active_is_complete(store_dir: Path, version: int) -> None:
    record = Store(store_dir).active()
    assert record is not None and record.version == version
    Manifest.read(Store(store_dir).path(record.slot), verify=True)  # every file, every hash


def test_sigkill_during_download_resumes(tmp_path: Path, broker) -> None:
    public, v1, v2, frames, reports = _setup(tmp_path, broker, extra_mb=4.0)  # 17 chunks
    store, log = tmp_path / "cam", tmp_path / "cam.log"
    proc = start_device(store, frames, broker.url, "cam", trust=public, seed=v1, log=log,
                        env={"EDGE_DEPLOY_PAUSE": "download"})
    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--state", str(tmp_path / "r.json"))
        assert code == 0, out + err
        wait_for(lambda: _paused(log, "download"), 180, "the device half-way through the download")
        # a malformed deployment meanwhile is counted apart; the download's report stays
        before = reports.latest["cam"]
        reports.client.publish("edge/default/cam/deploy", b'{"id": 1}', qos=1).wait_for_publish(10)
        wait_for(lambda: reports.latest["cam"].get("malformed") == 1, 180, "the malformed count")
        after = reports.latest["cam"]
        assert (after["id"], after["state"]) == (before["id"], "downloading"), after
        assert "deployment id" in after["malformed_reason"]
        _kill(proc)
        plan = transfer.plan_blob(transfer.pack_bundle(v2, tmp_path / "v2.tar"))
        part = store / "incoming" / f"{plan.sha256}.part"
        kept = len(transfer.done_chunks(part, plan))
        assert len(plan.chunks) // 2 <= kept < len(plan.chunks)
        _active_is_complete(store, 1)
        reports.history.clear()
        proc = start_device(store, frames, broker.url, "cam", trust=public, log=log)
        wait_for(lambda: reports.version("cam") == 2, 180, "v2 after the restart")
        progress = [b["progress"] for d, b in reports.history
                    if b.get("state") == "downloading" and b.get("progress") is not None]
        assert progress and progress[0] >= 0.5, progress  # resumed, not started over
        _active_is_complete(store, 2)
    finally:
        stop(proc)
        reports.close()


def test_sigkill_during_activation_leaves_a_consistent_slot(tmp_path: Path, broker) -> None:
    public, v1, v2, frames, reports = _setup(tmp_path, broker, extra_mb=0)
    store, log = tmp_path / "cam", tmp_path / "cam.log"
    # killed after the new slot was written, before the pointer moved: the old model runs
    proc = start_device(store, frames, broker.url, "cam", trust=public, seed=v1, log=log,
                        env={"EDGE_DEPLOY_PAUSE": "install"})
    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "v1")
        edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam", "--state",
                   str(tmp_path / "r.json"))
        wait_for(lambda: _paused(log, "install"), 180, "the device installing v2")
        _kill(proc)
        _active_is_complete(store, 1)
        # killed on trial (pointer moved, health gate running): back to the old slot on start
        proc = start_device(store, frames, broker.url, "cam", trust=public, log=log,
                            env={"EDGE_DEPLOY_PAUSE": "trial"})
        wait_for(lambda: log.read_text().count("paused at trial") == 1, 180, "v2 on trial")
        assert Store(store).active().trial is not None
        _kill(proc)
        proc = start_device(store, frames, broker.url, "cam", trust=public, log=log)
        wait_for(lambda: reports.state("cam") == "rolled_back", 180, "the rollback report")
        assert "restarted during the health gate" in reports.latest["cam"]["reason"]
        _active_is_complete(store, 1)
    finally:
        stop(proc)
        reports.close()


def test_tampered_chunk_is_detected_and_fetched_again(tmp_path: Path, broker) -> None:
    public, v1, v2, frames, reports = _setup(tmp_path, broker)
    plan = transfer.plan_blob(transfer.pack_bundle(v2, tmp_path / "v2.tar"))
    deploys: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: deploys.append(m.payload)
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("edge/default/cam/deploy", qos=1)
    watcher.loop_start()
    proc = None
    try:  # the device is offline while the fleet publishes; then a chunk is tampered with
        deploy = Background("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                            "--wait", "--timeout", "300", "--state", str(tmp_path / "r.json"))
        wait_for(lambda: deploys, 180, "the deployment")
        need = "edge/default/cam/" + transfer.NEED  # untrusted: counted, skipped, survived
        for bad in (b'{"blob": "%s", "chunks": [1e400]}' % plan.sha256.encode(), b"[",
                    b'{"blob": "%s", "chunks": %s}' % (plan.sha256.encode(),
                                                       str(list(range(1000))).encode())):
            watcher.publish(need, bad, qos=1).wait_for_publish(10)
        topic = transfer.blob_topic("default", plan.sha256, 1)
        watcher.publish(topic, b"\0" * plan.chunk_size, qos=1, retain=True).wait_for_publish(10)
        proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
        code, out, err = deploy.join(400)
        assert code == 0, out + err
        skipped = re.search(r"skipped (\d+) malformed device messages", err)
        assert skipped and int(skipped[1]) >= 3, err
        assert reports.version("cam") == 2 and reports.state("cam") == "healthy"
        assert reports.latest["cam"]["bad_chunks"] >= 1
        _active_is_complete(tmp_path / "cam", 2)
    finally:
        if proc is not None:
            stop(proc)
        watcher.loop_stop()
        reports.close()


def test_a_stuck_download_gives_way_to_a_cleared_or_a_newer_deployment(
        tmp_path: Path, broker) -> None:
    public, v1, v2, frames, reports = _setup(tmp_path, broker, extra_mb=0)
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
    state, dead = str(tmp_path / "r.json"), "http://127.0.0.1:1/v2.tar"  # nothing listens

    def stuck() -> str:
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--url", dead, "--state", state)
        assert code == 0, out + err
        wait_for(lambda: reports.state("cam") == "downloading" and "cannot download" in
                 reports.latest["cam"]["reason"], 180, "the download failing and retried")
        return reports.latest["cam"]["id"]

    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "v1")
        first = stuck()
        reports.client.publish("edge/default/cam/deploy", b"", qos=1,
                               retain=True).wait_for_publish(10)  # the fleet takes it back
        wait_for(lambda: reports.state("cam") == "cancelled", 180, "the withdrawn download")
        assert reports.latest["cam"]["id"] == first
        assert "withdrawn" in reports.latest["cam"]["reason"]
        second = stuck()
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--wait", "--timeout", "300", "--state", state)
        assert code == 0, out + err
        assert reports.version("cam") == 2 and reports.state("cam") == "healthy"
        assert any(d == "cam" and b.get("id") == second and b.get("state") == "cancelled" and
                   "superseded" in b["reason"] for d, b in reports.history)
        _active_is_complete(tmp_path / "cam", 2)
    finally:
        stop(proc)
        reports.close()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file with Range support. The network drops the first two responses
    half-way: the first is chunked (the client sees http.client.IncompleteRead), the second
    has a Content-Length (the client sees a short body)."""

    protocol_version = "HTTP/1.1"
    path_on_disk: Path
    ranges: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        data = self.path_on_disk.read_bytes()
        header = self.headers.get("Range", "")
        type(self).ranges.append(header)
        cut = len(type(self).ranges)
        start = int(header[len("bytes="):].split("-")[0]) if header.startswith("bytes=") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if cut == 1:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[:len(body) // 2]
            self.wfile.write(b"%x\r\n" % len(body) + half)  # one chunk, cut in its middle
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if cut == 2 else body)
        self.wfile.flush()
        if cut <= 2:
            self.connection.shutdown(2)
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_url_download_resumes_with_range(tmp_path: Path, broker) -> None:
    public, v1, v2, frames, reports = _setup(tmp_path, broker)
    archive = tmp_path / "v2.tar"
    assert edge_fleet("pack", str(v2), str(archive))[0] == 0
    handler = type("Handler", (_RangeHandler,), {"path_on_disk": archive, "ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v2.tar"
    proc = start_device(tmp_path / "cam", frames, broker.url, "cam", trust=public, seed=v1)
    try:
        wait_for(lambda: reports.version("cam") == 1, 180, "v1")
        code, out, err = edge_fleet("--broker", broker.url, "deploy", str(v2), "--device", "cam",
                                    "--url", url, "--wait", "--timeout", "300", "--state",
                                    str(tmp_path / "r.json"))
        assert code == 0, out + err
        assert "publishing" not in out  # nothing went over MQTT
        assert reports.version("cam") == 2
        assert handler.ranges[0] == "bytes=0-"
        assert len(handler.ranges) >= 3 and int(handler.ranges[2][6:].split("-")[0]) > 0
        _active_is_complete(tmp_path / "cam", 2)
    finally:
        stop(proc)
        server.shutdown()
        reports.close()


def _uploader(broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.reconnect_delay_set(1, 1)  # paho's own reconnection, as edge-fleet's client
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    wait_for(client.is_connected, 30, "connected")
    return client


def test_publishing_a_bundle_to_a_broker_that_stays_away_is_one_error(tmp_path: Path,
                                                                      broker) -> None:
    """paho raises RuntimeError for a message published while it is disconnected; the upload
    waits for the broker as a deployment does, then says what to do instead of a traceback."""
    private, _ = make_keys(tmp_path / "keys")
    tar = transfer.pack_bundle(signed_bundle(tmp_path / "v2", private, 2), tmp_path / "v2.tar")
    plan = transfer.plan_blob(tar)
    client = _uploader(broker)
    try:
        broker.stop()
        wait_for(lambda: not client.is_connected(), 30, "the connection lost")
        with pytest.raises(SyncError, match=r"^lost the broker and it did not come back within "
                                            r"1 s; run the command again once it is back"):
            transfer.publish_blob(client, "default", tar, plan, timeout=5, reconnect_wait=1)
    finally:
        client.loop_stop()
        client.disconnect()


def test_publishing_a_bundle_rides_out_a_broker_restart(tmp_path: Path, broker) -> None:
    """The connection is lost when the upload starts (it used to fail at once, while the
    deployment that follows waited for the broker): the upload waits for paho to reconnect
    and the broker ends up holding every chunk."""
    private, _ = make_keys(tmp_path / "keys")
    bundle = signed_bundle(tmp_path / "v2", private, 2, extra_mb=1.0)
    tar = transfer.pack_bundle(bundle, tmp_path / "v2.tar")
    plan = transfer.plan_blob(tar)
    assert len(plan.chunks) > 2
    client = _uploader(broker)
    outcome: list[BaseException | None] = []

    def upload() -> None:
        try:
            transfer.publish_blob(client, "default", tar, plan)
            outcome.append(None)
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    try:
        broker.stop()
        wait_for(lambda: not client.is_connected(), 30, "the connection lost")
        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        broker.start()
        thread.join(120)
        assert outcome == [None], outcome
        held = retained_topics(broker.port, f"edge/default/_blobs/{plan.sha256}/+")
        assert sorted(held) == sorted(transfer.blob_topic("default", plan.sha256, i)
                                      for i in range(len(plan.chunks)))
    finally:
        client.loop_stop()
        client.disconnect()
