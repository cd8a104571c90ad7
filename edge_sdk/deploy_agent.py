"""The device side of a fleet rollout: receive, download, verify, activate, gate, report.

A deployment is a retained JSON message on the device's own topic
``edge/{fleet}/{device}/deploy`` or on a group's ``edge/{fleet}/@{group}/deploy`` (retained,
because a device offline during the rollout must still get it when it comes back; the
command channel refuses retained requests by design). It is untrusted: validated field by
field, and the bundle it points at is trusted only after its signature (with --trust), its
archive sha256 and every file's sha256 check out.

Steps, each reported in the retained ``edge/{fleet}/{device}/deployment`` message (state,
progress, reason, the active model, the device's groups): queued -> downloading -> verifying
-> activating -> healthy, or refused / failed (old model untouched) / rolled_back (the gate
failed; the previous slot runs again). Everything runs in the agent's own thread and MQTT
connection; the camera thread only ever sees a model swap between two frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.errors import EdgeError
from edge_sdk.health_gate import GateSpec, HealthGate
from edge_sdk.hotswap import SwappableModel
from edge_sdk.model import Model, load
from edge_sdk.store import Store
from edge_sdk.trust import ModelIdentity, check_identity, read_identity, verify_bundle

log = logging.getLogger("edge_sdk.deploy")

MAX_DEPLOYMENT_BYTES = 256 * 1024
PAUSE_ENV = "EDGE_DEPLOY_PAUSE"  # tests: stop at a named step so it can be SIGKILLed there
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FINAL = ("healthy", "rolled_back", "refused", "failed")


@dataclass(frozen=True)
class Deployment:
    """One validated deployment message."""

    id: str
    name: str
    version: int
    blob: Any  # sync.transfer.BlobPlan
    url: str | None = None
    allow_downgrade: bool = False
    gate: GateSpec = field(default_factory=GateSpec)

    @classmethod
    def parse(cls, payload: bytes) -> Deployment:
        from sync.transfer import BlobPlan

        if len(payload) > MAX_DEPLOYMENT_BYTES:
            raise ValueError(f"deployment of {len(payload)} bytes is too large")
        d = json.loads(payload)
        if not isinstance(d, dict):
            raise ValueError("a deployment is a JSON object")
        dep_id = d.get("id")
        if not isinstance(dep_id, str) or not _ID_RE.match(dep_id):
            raise ValueError("deployment id must be 1-64 letters, digits, '.', '_' or '-'")
        name, version = check_identity(d.get("name"), d.get("version"))
        url = d.get("url")
        if url is not None and not (isinstance(url, str) and len(url) < 2048 and
                                    url.startswith(("http://", "https://"))):
            raise ValueError("url must be an http(s):// URL")
        allow = d.get("allow_downgrade", False)
        if not isinstance(allow, bool):
            raise ValueError("allow_downgrade must be true or false")
        from sync.errors import PayloadError

        try:
            blob = BlobPlan.from_dict(d.get("blob"))
        except PayloadError as exc:
            raise ValueError(str(exc)) from None
        return cls(dep_id, name, version, blob, url, allow, GateSpec.from_dict(d.get("gate")))


class DeployAgent:
    """Runs beside a Pipeline whose model is `model` (a SwappableModel)."""

    def __init__(self, store: Store, model: SwappableModel, *, broker: str, fleet: str,
                 device: str, groups: tuple[str, ...] = (), trust: str | Path | None = None,
                 sync: Any = None, config_file: str | None = None) -> None:
        from sync.config import load_config

        self.store, self.model, self.device, self.groups = store, model, device, groups
        self.trust = trust
        self.sync = sync
        self.config = load_config({"broker": broker, "fleet": fleet, "device_id": device},
                                  config_file)
        self.fleet = self.config.fleet
        self.refused = 0  # malformed deployment messages, counted and skipped
        self._queue: queue.Queue[Deployment | None] = queue.Queue()
        self._stop = threading.Event()
        self._client = None
        self._fetcher = None
        self._state: dict[str, Any] = {}
        self._done_ids = self._load_done()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DeployAgent:
        from sync.connection import build_client

        cfg = self.config
        client = build_client(cfg, f"edge-{cfg.fleet}-{self.device}-deploy")
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.reconnect_delay_set(0.5, 10)
        self._client = client
        client.connect_async(cfg.address.host, cfg.address.port, keepalive=cfg.keepalive)
        client.loop_start()
        self._thread = threading.Thread(target=self._main, name="edge-deploy", daemon=True)
        self._thread.start()
        note = self.store.rolled_back_on_open
        record = self.store.active()
        if note is not None and record is not None:  # not retried: it may crash us again
            self._done_ids.add(note)
            self._save_done()
            self._report(note, "rolled_back", reason=record.note)
        else:
            self._report(self._state.get("id"), self._state.get("state", "idle"))
        return self

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(10)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
                self._client.loop_stop()

    # -- MQTT (paho's thread) ----------------------------------------------------------------

    def _topics(self) -> list[str]:
        from sync import topics

        own = [topics.topic(self.fleet, self.device, "deploy")]
        return own + [f"{topics.ROOT}/{self.fleet}/@{g}/deploy" for g in self.groups]

    def _on_connect(self, client, userdata, flags, reason, props=None) -> None:
        if getattr(reason, "is_failure", False):
            return
        client.subscribe([(t, 1) for t in self._topics()])
        self._publish_state()
        fetcher = self._fetcher
        if fetcher is not None:  # subscriptions are gone with the old session: ask again
            fetcher.resubscribe()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            if "/_blobs/" in msg.topic:
                fetcher = self._fetcher
                if fetcher is not None:
                    fetcher.on_message(msg)
                return
            if not msg.payload:
                return
            try:
                deployment = Deployment.parse(msg.payload)
            except (ValueError, TypeError, RecursionError, EdgeError) as exc:
                self.refused += 1
                log.warning("deployment on %s refused: %s", msg.topic, exc)
                self._report(None, "refused", reason=f"malformed deployment: {exc}")
                return
            if deployment.id in self._done_ids:
                return
            self._queue.put(deployment)
        except Exception:  # one bad message must not end paho's thread
            self.refused += 1
            log.exception("deployment message could not be handled")

    # -- the agent's thread ------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            while not self._queue.empty():  # only the newest pending deployment matters
                newer = self._queue.get_nowait()
                if newer is None:
                    return
                item = newer
            if item.id in self._done_ids:
                continue
            try:
                state, reason = self._deploy(item)
            except Exception as exc:  # a bug must not end the agent: report it
                log.exception("deployment %s failed", item.id)
                state, reason = "failed", f"{type(exc).__name__}: {exc}"
            if self._stop.is_set() and state == "stopped":
                return
            self._finish(item, state, reason)

    def _deploy(self, dep: Deployment) -> tuple[str, str]:
        from sync.errors import SyncError

        active = self.store.active()
        self._report(dep.id, "queued")
        if active is not None:
            current = active.identity
            if current.get("name") == dep.name and current.get("version") == dep.version:
                return "healthy", "already running this version"
            if dep.version < int(current.get("version", 0)) and not dep.allow_downgrade:
                return "refused", (f"downgrade from version {current.get('version')} to "
                                   f"{dep.version} refused (deploy with --allow-downgrade)")
        part = self.store.incoming / f"{dep.blob.sha256}.part"
        for old in self.store.incoming.glob("*.part"):
            if old != part:
                old.unlink(missing_ok=True)
        delay = 1.0
        while True:
            try:
                self._download(dep, part)
                break
            except SyncError as exc:
                if self._stop.is_set():
                    return "stopped", ""
                self._report(dep.id, "downloading", reason=str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self._report(dep.id, "verifying")
        with open(part, "r+b") as f:
            f.truncate(dep.blob.size)
        from sync.transfer import blob_sha256

        if blob_sha256(part) != dep.blob.sha256:
            part.unlink(missing_ok=True)
            return "failed", "the downloaded archive does not match its sha256"
        try:
            staged = self.store.unpack(part, dep.id)
            identity = self._identity(staged)
        except EdgeError as exc:
            return "refused", str(exc)
        if (identity.name, identity.version) != (dep.name, dep.version):
            shutil.rmtree(staged, ignore_errors=True)
            return "refused", (f"the bundle is {identity.name} version {identity.version}, "
                               f"not the {dep.name} version {dep.version} the deployment names")
        if active is not None and identity.version < int(active.identity.get("version", 0)) \
                and not dep.allow_downgrade:
            shutil.rmtree(staged, ignore_errors=True)
            return "refused", "downgrade refused (deploy with --allow-downgrade)"
        self._report(dep.id, "activating")
        slot = self.store.install(staged)
        part.unlink(missing_ok=True)
        _pause("install")
        try:
            candidate = self._load(self.store.path(slot))
        except Exception as exc:  # a load failure leaves the old model running
            return "failed", f"the new model does not load: {type(exc).__name__}: {exc}"
        old = self.model.current
        gate = HealthGate(dep.gate, self.model.baseline_ms())
        self.store.activate(slot, identity, trial=dep.id)
        self.model.try_model(candidate, gate)
        _pause("trial")
        while True:
            verdict = gate.verdict()
            if verdict.passed is not None or self._stop.wait(0.05):
                break
        if verdict.passed:
            self.store.confirm()
            self.model.settle(candidate)
            return "healthy", (f"{verdict.frames} frames, speed "
                               f"{verdict.speed_ratio or 1:.0%} of the previous model")
        if verdict.passed is None:
            return "stopped", ""
        self.model.settle(old)
        self.store.rollback(verdict.reason)
        return "rolled_back", verdict.reason

    def _download(self, dep: Deployment, part: Path) -> None:
        from sync.transfer import MqttChunkFetcher, http_fetch

        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done == total:
                last[0] = now
                self._report(dep.id, "downloading", progress=round(done / total, 4))
            if done >= total / 2:
                _pause("download")

        if dep.url is not None:
            http_fetch(dep.url, part, dep.blob, progress=progress, stop=self._stop)
            return
        fetcher = MqttChunkFetcher(self._client, self.fleet, self.device, dep.blob, part,
                                   progress=progress, stop=self._stop)
        self._fetcher = fetcher
        try:
            fetcher.run()
        finally:
            self._fetcher = None
            self._state["bad_chunks"] = self._state.get("bad_chunks", 0) + fetcher.bad_chunks

    def _identity(self, folder: Path) -> ModelIdentity:
        if self.trust is not None:
            return verify_bundle(folder, self.trust)
        return read_identity(folder) or unsigned_identity(folder)

    def _load(self, folder: Path) -> Model:
        model = load(folder, trust=self.trust)
        probe = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        for _ in range(3):  # warm up beside the running model
            model.predict(probe)
        return model

    # -- reporting ---------------------------------------------------------------------------

    def _finish(self, dep: Deployment, state: str, reason: str) -> None:
        self._done_ids.add(dep.id)
        self._report(dep.id, state, reason=reason,
                     progress=1.0 if state in ("healthy", "rolled_back") else None)
        self._save_done()

    def _report(self, dep_id: str | None, state: str, *, reason: str = "",
                progress: float | None = None) -> None:
        record = self.store.active()
        self._state.update({"id": dep_id, "state": state, "reason": reason[:500],
                            "progress": progress, "ts": round(time.time(), 3),
                            "device": self.device, "groups": list(self.groups),
                            "active": record.identity if record is not None else None})
        if self.sync is not None and record is not None:
            ident = record.identity
            model = (f"{ident.get('name')} v{ident.get('version')} "
                     f"{str(ident.get('manifest_sha256', ''))[:12]}")
            if model != self.sync.model:
                self.sync.model = model
                self.sync.refresh_status()
        self._publish_state()

    def _publish_state(self) -> None:
        from sync import topics

        if self._client is None:
            return
        body = json.dumps(self._state)
        self._client.publish(topics.topic(self.fleet, self.device, "deployment"), body, qos=1,
                             retain=True)

    def _load_done(self) -> set[str]:
        path = self.store.root / "deployments.json"
        try:
            data = json.loads(path.read_text())
            self._state = data.get("last", {}) if isinstance(data.get("last"), dict) else {}
            return {d for d in data.get("done", []) if isinstance(d, str)}
        except (OSError, ValueError, AttributeError):
            return set()

    def _save_done(self) -> None:
        path = self.store.root / "deployments.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"done": sorted(self._done_ids)[-200:], "last": self._state}))
        os.replace(tmp, path)


def unsigned_identity(folder: Path) -> ModelIdentity:
    """An unsigned bundle (no --trust): named after its folder, version 0."""
    from edge_sdk.hashing import sha256_file

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(folder).resolve().name)[:64] or "model"
    return ModelIdentity(name, 0, sha256_file(Path(folder) / "manifest.json"), "")


def _pause(step: str) -> None:
    """Test hook: with EDGE_DEPLOY_PAUSE=step the agent says so on stderr and waits there."""
    if os.environ.get(PAUSE_ENV) == step:
        sys.stderr.write(f"edge-deploy: paused at {step}\n")
        sys.stderr.flush()
        time.sleep(3600)
