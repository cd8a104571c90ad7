"""Helpers for the fleet console tests (a uniquely named module, not conftest.py, so test
files can import it): a raw MQTT publisher, a row counter, `edge-fleet serve` as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sync.envelope import encode_envelope


class Publisher:
    """A bare paho client that sends pre-built envelopes (QoS 1) as fast as the broker takes
    them: the shape of traffic many devices make, without running many outboxes."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def raw(self, topic: str, payload: bytes, retain: bool = False,
            qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def envelope(self, device: str, stream: str, seq: int, payload: object,
                 ts: float | None = None, fleet: str = "default", msg_id: str | None = None,
                 qos: int = 1) -> mqtt.MQTTMessageInfo:
        body = encode_envelope(msg_id or f"{device}-{stream}-{seq}", device, stream, seq,
                               time.time() if ts is None else ts,
                               json.dumps(payload).encode())
        return self.raw(f"edge/{fleet}/{device}/{stream}", body, qos=qos)

    def status(self, device: str, state: str = "online", model: str = "det-int8",
               fleet: str = "default") -> None:
        body = {"state": state, "device": device, "fleet": fleet, "model": model,
                "version": "1.0", "uptime_s": 5.0, "ts": round(time.time(), 3)}
        self.raw(f"edge/{fleet}/{device}/status", json.dumps(body).encode(), retain=True)

    def flush(self, infos: list[mqtt.MQTTMessageInfo], timeout: float = 120) -> None:
        for info in infos:
            info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count(db: str, sql: str = "SELECT COUNT(*) FROM messages") -> int:
    from sync.console.store import open_store

    store = open_store(db, migrate_schema=False)
    try:
        rows = store.query(sql)
        return int(next(iter(rows[0].values())))
    finally:
        store.close()


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    port: int
    token: str | None
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> str:
        """SIGTERM, wait, and return stderr (its last line is the ingest summary)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.stderr


def ready(serve: ServeProcess, web: bool) -> bool:
    if serve.proc.poll() is not None:
        serve._reader.join(5)
        raise AssertionError(f"edge-fleet serve exited: {serve.stderr}")
    if "subscribed" not in serve.stderr:
        return False
    if not web:
        return True
    try:
        serve.get("/api/stats")
        return True
    except OSError:
        return False
