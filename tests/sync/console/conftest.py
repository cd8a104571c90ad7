"""Fixtures for the fleet console: a real PostgreSQL (one server per test session, a fresh
database per test), database URLs for both engines, a raw MQTT publisher, and `edge-fleet
serve` run as a process on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from consoletest_pg import PgServer, pg_bindir
from paho.mqtt.enums import CallbackAPIVersion
from synctest_broker import REPO_ROOT, free_port, wait_for

from sync.envelope import encode_envelope


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL NOT TESTED: no /usr/lib/postgresql/*/bin/initdb "
                    "(apt-get install postgresql; `make system-deps` does)")
    server = PgServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "console.db")
    return request.getfixturevalue("pg_server").create_database()


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

    def raw(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def envelope(self, device: str, stream: str, seq: int, payload: object,
                 ts: float | None = None, fleet: str = "default") -> mqtt.MQTTMessageInfo:
        body = encode_envelope(f"{device}-{stream}-{seq}", device, stream, seq,
                               time.time() if ts is None else ts,
                               json.dumps(payload).encode())
        return self.raw(f"edge/{fleet}/{device}/{stream}", body)

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


@pytest.fixture
def publisher(broker) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    yield p
    p.close()


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


def _ready(serve: ServeProcess, web: bool) -> bool:
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


@pytest.fixture
def serve_factory(broker) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(db: str, *extra: str, token: str | None = None, web: bool = True,
              ready_wait: float = 0.0) -> ServeProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "EDGE_CONSOLE_TOKEN"}
        if token is not None:
            env["EDGE_CONSOLE_TOKEN"] = token
        cmd = [sys.executable, "-m", "sync.fleet", "--broker", broker.url, "serve", "--db", db,
               "--listen", f"127.0.0.1:{port}", *extra]
        if not web:
            cmd.append("--no-web")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        serve = ServeProcess(proc, port, token)
        started.append(serve)
        wait_for(lambda: _ready(serve, web), 60, "edge-fleet serve to answer")
        time.sleep(ready_wait)
        return serve

    yield start
    for s in started:
        s.stop()
