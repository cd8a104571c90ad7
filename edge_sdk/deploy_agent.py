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
failed or timed out; the previous slot runs again) / cancelled (before activation: a newer
deployment arrived or the retained one was cleared; an older one arriving later is counted
as ``skipped`` and kept until the newer one is healthy). A download is retried with backoff at
most `download_attempts` times. Malformed deployment messages are counted in the report
(``malformed``, ``malformed_reason``) without touching the state of the one in progress.
Everything runs in the agent's own thread and MQTT connection; the camera thread only ever
sees a model swap between two frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.errors import EdgeError
from edge_sdk.health_gate import GateSpec, HealthGate, Verdict
from edge_sdk.hotswap import SwappableModel
from edge_sdk.model import Model, load
from edge_sdk.store import Store
from edge_sdk.trust import ModelIdentity, check_identity, read_identity, verify_bundle

log = logging.getLogger("edge_sdk.deploy")

MAX_DEPLOYMENT_BYTES = 256 * 1024
PAUSE_ENV = "EDGE_DEPLOY_PAUSE"  # tests: stop at a named step so it can be SIGKILLed there
FINAL = ("healthy", "rolled_back", "refused", "failed", "cancelled")
DOWNLOAD_ATTEMPTS = 8  # then the deployment fails; backoff 1, 2, 4 ... 60 s between them
MAX_RETRY_DELAY = 60.0
DISK_RESERVE = 64 << 20  # kept free beside a download (outbox, logs, clips)
IN_PROGRESS = ("queued", "downloading", "verifying", "activating")  # steps, not outcomes
MAX_DONE = 200  # finished deployment ids remembered (newest), so retained ones do not re-run


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
    topic: str = ""  # where it came from (a cleared retained message there withdraws it)

    @classmethod
    def parse(cls, payload: bytes) -> Deployment:
        from sync.transfer import BlobPlan

        if len(payload) > MAX_DEPLOYMENT_BYTES:
            raise ValueError(f"deployment of {len(payload)} bytes is too large")
        d = json.loads(payload)
        if not isinstance(d, dict):
            raise ValueError("a deployment is a JSON object")
        from sync.topics import is_name

        dep_id = d.get("id")
        if not is_name(dep_id):
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


class DoneList:
    """Ids of finished deployments, newest last, the last `limit` kept (and persisted in
    that order), so a retained deployment is not run again after a restart."""

    def __init__(self, ids: list[str] = (), limit: int = MAX_DONE) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        for dep_id in ids:
            self.add(dep_id)

    def add(self, dep_id: str) -> None:
        self._ids.pop(dep_id, None)
        self._ids[dep_id] = None
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)  # the oldest

    def __contains__(self, dep_id: object) -> bool:
        return dep_id in self._ids

    def to_list(self) -> list[str]:
        return list(self._ids)


class DeployAgent:
    """Runs beside a Pipeline whose model is `model` (a SwappableModel)."""

    download_attempts = DOWNLOAD_ATTEMPTS
    first_retry_delay = 1.0
    disk_reserve = DISK_RESERVE

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
        self.skipped = 0  # deployments older than the one running or waiting, counted
        # _lock guards _state, _pending, _current, _abort*: paho's thread and ours share them
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._pending: Deployment | None = None  # only the newest waiting deployment matters
        self._current: Deployment | None = None
        # skipped as older than the current/pending one, by topic: marked done once a newer one
        # is healthy, queued again if it is not (a failed v3 must not also lose the group's v2)
        self._skipped: dict[str, Deployment] = {}
        self._abortable = False  # the current one may still be abandoned (not yet activating)
        self._abort = threading.Event()  # set: abandon the current download (or stop)
        self._abort_reason = ""
        self._stop = threading.Event()
        self._client = None
        self._fetcher = None
        self._state: dict[str, Any] = {}
        self._done_ids = self._load_done()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DeployAgent:
        from sync.connection import build_client

        # before connecting: the retained deployment that was rolled back at start-up must
        # already count as done when it arrives (it may be what crashed the device)
        note = self.store.rolled_back_on_open
        record = self.store.active()
        if note is not None and record is not None:
            with self._lock:
                self._done_ids.add(note)
            self._save_done()
            self._report(note, "rolled_back", reason=record.note)  # published on connect
        elif self._state.get("state") in IN_PROGRESS:
            # the work stopped with the process that did it; its deployment runs again if
            # still retained, but one withdrawn meanwhile (a halted rollout) never comes back:
            # reporting its old step would show the device busy with it for ever
            self._report(None, "idle", reason=f"restarted during deployment "
                         f"{self._state.get('id')} ({self._state['state']})")
        else:
            self._report(self._state.get("id"), self._state.get("state", "idle"))
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
        return self

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._abort.set()
            self._wake.notify_all()
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
                self._withdrawn(msg.topic)
                return
            try:
                deployment = replace(Deployment.parse(msg.payload), topic=msg.topic)
            except (ValueError, TypeError, RecursionError, EdgeError) as exc:
                self._malformed(msg.topic, f"malformed deployment: {exc}")
                return
            with self._lock:
                current, pending = self._current, self._pending
                if deployment.id in self._done_ids or any(
                        d is not None and d.id == deployment.id for d in (current, pending)):
                    return
                newer = next((d for d in (current, pending) if d is not None and
                              not self._supersedes(deployment, d)), None)
                if newer is not None:
                    self._skip(deployment, newer)
                else:
                    if pending is not None and pending.topic != deployment.topic:
                        self._skipped[pending.topic] = pending
                    self._skipped.pop(deployment.topic, None)
                    self._pending = deployment
                    if current is not None and self._abortable:
                        self._abort_reason = f"superseded by deployment {deployment.id}"
                        self._abort.set()
                    self._wake.notify_all()
                    return
            self._publish_state()  # the skip, reported apart from the current deployment
        except Exception as exc:  # one bad message must not end paho's thread
            log.exception("deployment message could not be handled")
            with contextlib.suppress(Exception):
                self._malformed(msg.topic, f"{type(exc).__name__}: {exc}")

    def _supersedes(self, new: Deployment, old: Deployment) -> bool:
        """Whether `new` replaces `old`: the message that replaced it on its own topic, or a
        higher version, or the same version from the device's own topic over a group's (on a
        reconnect the device's canary of v3 and the group's completed v2 arrive in any order).
        """
        if new.topic == old.topic or new.version > old.version:
            return True
        own = self._topics()[0]
        return new.version == old.version and (new.topic == own or old.topic != own)

    def _skip(self, dep: Deployment, newer: Deployment) -> None:
        """Count an older deployment (under the lock); it neither runs nor cancels `newer`."""
        reason = (f"deployment {dep.id} (version {dep.version}) skipped: {newer.id} "
                  f"(version {newer.version}) is newer")
        log.info("%s", reason)
        self._skipped[dep.topic] = dep
        self.skipped += 1
        self._state["skipped"] = self.skipped
        self._state["skipped_reason"] = reason[:500]

    def _withdrawn(self, topic: str) -> None:
        """A cleared retained deployment: drop it if waiting, abandon it if downloading."""
        with self._lock:
            self._skipped.pop(topic, None)
            if self._pending is not None and self._pending.topic == topic:
                self._pending = None
            current = self._current
            if current is not None and current.topic == topic and self._abortable:
                self._abort_reason = "withdrawn: its retained deployment message was cleared"
                self._abort.set()

    def _malformed(self, topic: str, reason: str) -> None:
        """Count and report a bad message apart, leaving the current deployment's report."""
        log.warning("deployment on %s refused: %s", topic, reason)
        with self._lock:
            self.refused += 1
            self._state["malformed"] = self.refused
            self._state["malformed_reason"] = f"{topic}: {reason}"[:500]
        self._publish_state()

    # -- the agent's thread ------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stop.is_set():
                    self._wake.wait()
                if self._stop.is_set():
                    return
                item, self._pending = self._pending, None
                if item.id in self._done_ids:
                    continue
                self._current, self._abortable = item, True
                abort = self._abort = threading.Event()
                self._abort_reason = ""
            try:
                state, reason = self._deploy(item, abort)
            except Exception as exc:  # a bug must not end the agent: report it
                log.exception("deployment %s failed", item.id)
                state, reason = "failed", f"{type(exc).__name__}: {exc}"
            try:
                if self._stop.is_set() and state == "stopped":
                    return
                with self._lock:  # cancelled for an older one (its own topic's downgrade)?
                    replaced = self._pending
                    done = not (state == "cancelled" and replaced is not None and
                                replaced.version < item.version)
                self._finish(item, state, reason, done=done)
            except Exception:  # e.g. the store's disk failing: logged, the agent goes on
                log.exception("deployment %s: the outcome could not be recorded", item.id)
            finally:
                with self._lock:
                    self._current, self._abortable = None, False
                    self._after(item, state)

    def _after(self, item: Deployment, state: str) -> None:
        """The deployments skipped for `item`: done if it is healthy (they would downgrade),
        else the newest of them is queued again (under the lock)."""
        if state == "cancelled" or not self._skipped:
            return
        older = [d for d in self._skipped.values() if d.version <= item.version]
        if state == "healthy":
            for dep in older:
                self._done_ids.add(dep.id)
                self._skipped.pop(dep.topic, None)
            if older:
                try:
                    self._save_done()
                except OSError:
                    log.exception("the skipped deployments could not be recorded as done")
        elif self._pending is None and older:
            self._pending = max(older, key=lambda d: d.version)
            self._skipped.pop(self._pending.topic, None)
            self._wake.notify_all()

    def _abandoned(self, abort: threading.Event) -> tuple[str, str] | None:
        if self._stop.is_set():
            return "stopped", ""
        if abort.is_set():
            with self._lock:
                return "cancelled", self._abort_reason or "cancelled"
        return None

    def _deploy(self, dep: Deployment, abort: threading.Event) -> tuple[str, str]:
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
        short = self._disk_short(dep, part)
        if short is not None:
            return "failed", short
        delay, attempt = self.first_retry_delay, 0
        while True:
            try:
                self._download(dep, part, abort)
                break
            except SyncError as exc:
                if (gone := self._abandoned(abort)) is not None:
                    return gone
                if self._client is None or self._client.is_connected() or dep.url is not None:
                    attempt += 1  # time without a broker does not use up MQTT attempts
                if attempt >= self.download_attempts:
                    return "failed", f"download failed {attempt} times; last: {exc}"
                self._report(dep.id, "downloading", reason=f"{exc} (attempt {attempt} of "
                                                            f"{self.download_attempts})")
                abort.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        if (gone := self._abandoned(abort)) is not None:
            return gone
        self._report(dep.id, "verifying")
        with open(part, "r+b") as f:
            f.truncate(dep.blob.size)
        from edge_sdk.hashing import sha256_file

        if sha256_file(part) != dep.blob.sha256:
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
        with self._lock:  # from here on the deployment runs to its end
            if (gone := self._abandoned(abort)) is not None:
                shutil.rmtree(staged, ignore_errors=True)
                return gone
            self._abortable = False
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
        deadline = time.monotonic() + dep.gate.timeout
        while True:
            verdict = gate.verdict()
            if verdict.passed is not None or self._stop.wait(0.05):
                break
            if time.monotonic() >= deadline:  # a stalled camera or a hung candidate
                verdict = Verdict(False, f"timeout: the health gate saw {verdict.frames} of "
                                         f"{dep.gate.frames} frames in {dep.gate.timeout:g} s",
                                  verdict.frames, verdict.errors, verdict.speed_ratio)
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

    def _disk_short(self, dep: Deployment, part: Path) -> str | None:
        """Why the download (then its unpacked copy) would not fit, or None."""
        try:
            on_disk = min(dep.blob.size, part.stat().st_blocks * 512) if part.exists() else 0
            free = shutil.disk_usage(self.store.root).free
        except OSError as exc:
            return f"cannot check the free space of {self.store.root}: {exc.strerror}"
        need = dep.blob.size - on_disk + dep.blob.size  # the archive, then its unpacked files
        if free < need + self.disk_reserve:
            mb = 1 << 20
            return (f"not enough disk space in {self.store.root}: the bundle needs "
                    f"{-(-need // mb)} MB (and {self.disk_reserve // mb} MB kept free), "
                    f"{free // mb} MB free")
        return None

    def _download(self, dep: Deployment, part: Path, abort: threading.Event) -> None:
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
            http_fetch(dep.url, part, dep.blob, progress=progress, stop=abort)
            return
        fetcher = MqttChunkFetcher(self._client, self.fleet, self.device, dep.blob, part,
                                   progress=progress, stop=abort)
        self._fetcher = fetcher
        try:
            fetcher.run()
        finally:
            self._fetcher = None
            with self._lock:
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

    def _finish(self, dep: Deployment, state: str, reason: str, *, done: bool = True) -> None:
        if done:
            with self._lock:
                self._done_ids.add(dep.id)
        self._report(dep.id, state, reason=reason,
                     progress=1.0 if state in ("healthy", "rolled_back") else None)
        self._save_done()

    def _report(self, dep_id: str | None, state: str, *, reason: str = "",
                progress: float | None = None) -> None:
        record = self.store.active()
        with self._lock:
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
        with self._lock:
            body = json.dumps(self._state)
        self._client.publish(topics.topic(self.fleet, self.device, "deployment"), body, qos=1,
                             retain=True)

    def _load_done(self) -> DoneList:
        path = self.store.root / "deployments.json"
        try:
            data = json.loads(path.read_text())
            self._state = data.get("last", {}) if isinstance(data.get("last"), dict) else {}
            done = data.get("done", [])
            return DoneList([d for d in done if isinstance(d, str)] if isinstance(done, list)
                            else [])
        except (OSError, ValueError, AttributeError):
            return DoneList()

    def _save_done(self) -> None:
        path = self.store.root / "deployments.json"
        tmp = path.with_suffix(".tmp")
        with self._lock:
            body = json.dumps({"done": self._done_ids.to_list(), "last": self._state})
        tmp.write_text(body)
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
