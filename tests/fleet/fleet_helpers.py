"""Real tiny bundles (ONNX built with onnx.helper: Flatten -> MatMul -> Add, in milliseconds),
signed with real keys, and real device processes (`edge-run --store`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from optimize.signing import keygen, sign
from tests.edge_sdk.bundles import HW, LABELS, classifier_manifest

ROOT = Path(__file__).resolve().parents[2]


def tiny_onnx(path: Path, *, nan: bool = False, seed: int = 0, extra_mb: float = 0.0) -> Path:
    """A classifier on a 3x32x32 input; `nan` gives NaN weights (outputs NaN), `extra_mb`
    pads the model with an unused initializer (a bigger bundle for transfer tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.01, (3 * HW * HW, len(LABELS))).astype(np.float32)
    if nan:
        weights[:] = np.nan
    inits = [numpy_helper.from_array(weights, "w"),
             numpy_helper.from_array(np.zeros(len(LABELS), np.float32), "b"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    if extra_mb:
        pad = rng.integers(0, 255, int(extra_mb * (1 << 20)), dtype=np.uint8)
        inits.append(numpy_helper.from_array(pad, "padding"))
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["output"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      [1, 3, HW, HW])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, len(LABELS)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def make_bundle(folder: Path, *, nan: bool = False, seed: int = 0,
                extra_mb: float = 0.0) -> Path:
    from edge_sdk.hashing import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "model.onnx", nan=nan, seed=seed, extra_mb=extra_mb)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    manifest = classifier_manifest()
    for entry in manifest["files"].values():
        entry["sha256"] = sha256_file(folder / entry["path"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def signed_bundle(folder: Path, key: Path, version: int, **kw) -> Path:
    make_bundle(folder, **kw)
    sign(folder, key, version=version, name="tiny")
    return folder


def make_keys(folder: Path, name: str = "fleet") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return keygen(folder / name)


def frames_folder(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return folder


def start_device(store: Path, source: Path, broker_url: str, device: str, *,
                 trust: Path | None, seed: Path | None = None, groups: tuple[str, ...] = (),
                 fps: float = 30.0, env: dict | None = None,
                 log: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge_sdk.cli", "--store", str(store), "--source",
           str(source), "--mqtt", broker_url, "--device-id", device, "--loop-fps", str(fps),
           "-q"]
    if trust is not None:
        cmd += ["--trust", str(trust)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for g in groups:
        cmd += ["--group", g]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    stderr = open(log or store.with_suffix(".log"), "ab")  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=stderr)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def retained_topics(port: int, pattern: str = "edge/#") -> list[str]:
    """Topics matching `pattern` the broker retains: the retained messages a subscription gets
    are queued before the echo of anything we publish after it (one client, in order)."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[str] = []
    barrier = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(c, u, msg) -> None:
        if msg.topic == "probe/barrier":
            barrier.set()
        else:
            got.append(msg.topic)

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe([(pattern, 1), ("probe/barrier", 1)])
        client.publish("probe/barrier", b"x", qos=1)
        assert barrier.wait(60), "the broker did not echo the barrier message"
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def rollouts_on_file(state: Path) -> list[dict]:
    """The rollouts an edge-fleet --state file holds ([] before the first is recorded)."""
    return json.loads(state.read_text())["rollouts"] if state.exists() else []


@contextlib.contextmanager
def deploy_stalled_at_canary(tmp_path: Path):
    """`edge-fleet deploy` of a signed v2 to device "cam", its broker paused once the rollout is
    recorded, so the canary's publish waits for `broker.resume()`. Yields (broker, the --state
    file, the deploy process); both are stopped on the way out."""
    from synctest_broker import Broker, wait_for

    from sync import transfer

    (tmp_path / "broker").mkdir()
    log = tmp_path / "broker" / "subscribe.log"  # a file log is flushed line by line
    broker = Broker(tmp_path / "broker", extra=f"log_type subscribe\nlog_dest file {log}").start()
    proc = None
    try:
        private, _ = make_keys(tmp_path / "keys")
        v2 = signed_bundle(tmp_path / "v2", private, 2, seed=2)
        state = tmp_path / "r.json"
        proc = subprocess.Popen([sys.executable, "-m", "sync.fleet", "--broker", broker.url,
                                 "deploy", str(v2), "--device", "cam", "--url",
                                 "http://127.0.0.1:9/m.tar", "--state", str(state)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        wait_for(lambda: f"/+/{transfer.NEED}" in log.read_text(), 180,
                 "edge-fleet subscribed")
        broker.pause()  # nothing deploy publishes from here on is acknowledged
        wait_for(lambda: rollouts_on_file(state), 180, "the rollout recorded")
        yield broker, state, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()


def unread_by_broker(port: int) -> int:
    """Bytes waiting in the broker's connections that it has not read: with the broker paused,
    non-zero once a client has sent it something (a publish that will wait for its ack)."""
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    unread += int(fields[4].split(":")[1], 16)
    return unread


@contextlib.contextmanager
def fleet_run_stalled_at_publish(tmp_path: Path, broker, *argv: str):
    """`edge-fleet *argv` against `broker` (started with a file subscribe log at
    tmp_path/"broker"/"subscribe.log"), the broker paused once it subscribed, yielded once
    the run has sent its first message since: a publish waiting for `broker.resume()`."""
    from synctest_broker import wait_for

    from sync import transfer

    log = tmp_path / "broker" / "subscribe.log"
    subscribed = log.read_text().count(f"/+/{transfer.NEED}")
    proc = subprocess.Popen([sys.executable, "-m", "sync.fleet", "--broker", broker.url, *argv],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.read_text().count(f"/+/{transfer.NEED}") > subscribed, 180,
                 "edge-fleet subscribed")
        broker.pause()
        wait_for(lambda: unread_by_broker(broker.port) or proc.poll() is not None, 180,
                 "edge-fleet publishing")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
