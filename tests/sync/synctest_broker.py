"""Test helpers for sync: a real Mosquitto started on a free loopback port with persistence
and stopped, killed, paused and resumed by its pid; a recording subscriber.

(A uniquely named module rather than conftest.py so test files can import it.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Broker:
    """One Mosquitto process; ``listeners`` is extra config for additional ports."""

    workdir: Path
    port: int = field(default_factory=free_port)
    listeners: str = ""
    extra: str = ""  # global options, e.g. "autosave_interval 1"
    per_listener_settings: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("broker not started")
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            # Started as root, Mosquitto would switch to user `mosquitto`, which cannot read
            # pytest's tmp dirs; staying root is fine for a loopback-only test broker.
            "user root" if os.geteuid() == 0 else "",
            f"per_listener_settings {'true' if self.per_listener_settings else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            # Queues survive a clean stop (SIGTERM saves the database); see test_fault.py for
            # why the tests do not claim anything about a SIGKILLed broker's queues.
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            self.extra,
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            self.listeners,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> Broker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()

        ports = [self.port, *map(int, re.findall(r"^listener (\d+)", self.listeners, re.M))]

        def accepting() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited:\n{self.log_path.read_text()[-2000:]}")
            for port in ports:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                except OSError:
                    return False
            return True

        wait_for(accepting, timeout, f"mosquitto on ports {ports}")
        return self

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop by pid; SIGTERM makes Mosquitto save its persistence file first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGTERM:
            self.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        self.send_signal(sig)
        self.proc.wait(timeout=timeout)

    def pause(self) -> None:
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> object:
        return json.loads(self.payload)


class Recorder:
    """A paho subscriber that records everything it gets and reconnects by itself.

    With ``session`` set it uses a persistent session (clean_session=False) so the broker
    queues QoS 1 messages for it while it is disconnected.
    """

    def __init__(self, port: int, topics: list[str], session: str | None = None) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or f"rec-{uuid.uuid4().hex[:8]}",
            clean_session=session is None,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, "recorder subscription")

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        self.connected.set()
        for t in self._topics:
            client.subscribe(t, qos=1)

    def _on_message(self, client: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


REPO_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: import this checkout's ``sync`` whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_fleet(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``edge-fleet`` (as ``python -m sync.fleet``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sync.fleet", *args],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(),
    )
