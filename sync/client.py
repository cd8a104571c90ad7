"""``MqttSync``: the device side. ``publish()`` only appends to the durable outbox and returns;
a background thread owns the MQTT connection and drains the outbox at QoS 1.

Threads (all daemons, all stopped by ``close()``):
- ``sync-io`` owns the paho client: connects with backoff, sends outbox rows in order, deletes
  a row only after its PUBACK, answers commands, keeps the retained status fresh.
- ``sync-maint`` writes telemetry into the outbox and refreshes the retained status.
- ``sync-cmd`` runs command handlers so a slow handler never stalls the network loop.
The caller's thread never touches the network or waits on one of these threads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from sync import topics
from sync.backoff import Backoff
from sync.commands import Command, CommandAck, CommandHandler, CommandRegistry
from sync.config import SyncConfig, load_config
from sync.connection import Will, build_client, connect_and_wait, make_ssl_context
from sync.envelope import encode_envelope, encode_payload
from sync.errors import ConfigError, ConnectError, OutboxError, PayloadError, SyncError
from sync.outbox import Outbox, OutboxStats
from sync.telemetry import Telemetry, TelemetryProvider

log = logging.getLogger("sync")

_READ_BATCH = 500  # outbox rows fetched per query
_ACK_BATCH = 256  # PUBACKed rows deleted per transaction
_ACK_DELAY = 0.02  # ... or after this many seconds
_IDLE_POLL = 0.01  # network loop wait when there is nothing to send


class Priority(IntEnum):
    """When the outbox is full, the lowest priority goes first (oldest first within one)."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


@dataclass(frozen=True)
class Receipt:
    """What ``publish()`` accepted: ``stored`` is False only if the full outbox dropped it."""

    id: str
    stream: str
    seq: int
    stored: bool


@dataclass(frozen=True)
class SyncState:
    """A snapshot of the client for dashboards, tests and ``wait_connected``."""

    connected: bool
    connected_since: float | None  # time.time() of the current session's CONNACK
    reconnects: int
    sent: int
    last_error: str | None
    outbox: OutboxStats
    command_errors: int = 0  # requests answered with an error (bad request, handler failure)
    thread_restarts: int = 0  # a background thread failed and was started again (a bug)


class MqttSync:
    """Durable, non-blocking MQTT publishing for one device (see module docstring)."""

    def __init__(
        self,
        broker: str | None = None,
        device_id: str | None = None,
        outbox: str | os.PathLike[str] | None = None,
        *,
        config: SyncConfig | None = None,
        config_file: str | os.PathLike[str] | None = None,
        model: str | None = None,
        app_version: str | None = None,
        telemetry: TelemetryProvider | None = None,
        **settings: Any,
    ) -> None:
        flags = {"broker": broker, "device_id": device_id, **settings}
        if outbox is not None:
            flags["outbox"] = os.fspath(outbox)
        if config is None:
            config = load_config(flags, config_file)
        else:
            config = config.replace(**{k: v for k, v in flags.items() if v is not None})
        if not config.device_id:
            raise ConfigError(
                "device_id is required (argument, config file or EDGE_SYNC_DEVICE_ID)"
            )
        if config.address.tls:  # a wrong ca_file/cert_file/key_file is said now, in one line
            make_ssl_context(config)
        self.config = config
        self.device_id = config.device_id
        self.model = model
        self.app_version = app_version or _package_version()
        self.telemetry = Telemetry(telemetry)
        self.commands = CommandRegistry()
        self.commands.register("ping", self._cmd_ping)
        self.commands.register("stats", self._cmd_stats)
        self._outbox = Outbox(config.outbox, config.outbox_max_bytes, fsync=config.fsync,
                              on_damaged=config.outbox_damaged)
        self._topic_prefix = f"{topics.ROOT}/{config.fleet}/{config.device_id}/"
        self._started_at = time.time()
        self._id_prefix = f"{os.urandom(10).hex()}-"
        self._id_counter = itertools.count(1)
        self._valid_streams: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cmd_queue: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(maxsize=1000)
        self._acks_out: deque[bytes] = deque(maxlen=1000)  # command acks waiting for the link
        self._heartbeat_due = threading.Event()
        self._connected = threading.Event()
        self._connected_since: float | None = None
        self._reconnects = 0
        self._sent = 0
        self._last_error: str | None = None
        self._last_exc: SyncError | None = None
        self._outbox_problem = ""  # the last outbox failure logged by the network thread
        self._thread_restarts = 0
        # I/O-thread-only state for the current connection
        self._inflight: dict[int, int] = {}  # paho mid -> outbox rowid
        self._acked: list[int] = []
        self._acked_since = 0.0
        self._cursor = 0
        self._link_lost = False

    # -- public API --------------------------------------------------------------------------

    def start(self) -> MqttSync:
        """Start the background threads; returns at once even if the broker is unreachable."""
        if self._threads:
            return self
        for name, target in (
            ("sync-io", self._io_main),
            ("sync-maint", self._maint_main),
            ("sync-cmd", self._cmd_main),
        ):
            thread = threading.Thread(target=self._guarded(name, target),
                                      name=f"{name}-{self.device_id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def publish(
        self, stream: str, payload: Any, priority: int = Priority.NORMAL
    ) -> Receipt:
        """Append one message to the outbox and return; it is on disk when this returns.

        Raises ``PayloadError`` for a bad stream name or a payload JSON cannot carry, and
        ``OutboxError`` if the disk refuses the write. Never waits for the network.
        """
        if stream not in self._valid_streams:
            self._valid_streams.add(topics.check_stream(stream))
        if not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
            raise PayloadError(f"priority must be an int such as Priority.HIGH, not {priority!r}")
        return self._append(stream, payload, int(priority))

    def _append(self, stream: str, payload: Any, priority: int) -> Receipt:
        body = encode_payload(payload)
        # A random per-process prefix plus a counter: unique like a UUID, without a
        # getrandom() call per message (which is slow right after a cache-cold inference).
        msg_id = f"{self._id_prefix}{next(self._id_counter):x}"
        ts = time.time()
        device = self.device_id
        seq, stored = self._outbox.append(
            stream, priority, lambda seq: encode_envelope(msg_id, device, stream, seq, ts, body)
        )
        return Receipt(msg_id, stream, seq, stored)

    def command(self, name: str, replace: bool = False) -> Any:
        """Decorator: ``@sync.command("reload")`` registers ``fn(cmd: Command) -> result``."""

        def register(fn: CommandHandler) -> CommandHandler:
            self.commands.register(name, fn, replace=replace)
            return fn

        return register

    def register_command(self, name: str, handler: CommandHandler, replace: bool = False) -> None:
        self.commands.register(name, handler, replace=replace)

    def update_telemetry(self, **values: Any) -> None:
        """Push runtime health values (``fps=``, ``latency_p95_ms=``, ``drops=``, ``drift=``)."""
        self.telemetry.update(**values)

    def refresh_status(self) -> None:
        """Publish the retained status soon (e.g. after ``self.model`` changed), not only at
        the next telemetry interval."""
        self._heartbeat_due.set()

    def state(self) -> SyncState:
        return SyncState(
            self._connected.is_set(),
            self._connected_since if self._connected.is_set() else None,
            self._reconnects,
            self._sent,
            self._last_error,
            self._outbox.stats(),
            self.commands.errors,
            self._thread_restarts,
        )

    def next_seq(self, stream: str) -> int:
        """The sequence number the next message on ``stream`` will get (survives restarts)."""
        return self._outbox.next_seq(stream)

    def wait_connected(self, timeout: float) -> None:
        """Block until connected; raise the last connect error (e.g. ``AuthError``) if not."""
        if not self._threads:
            raise SyncError("call start() before wait_connected()")
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if time.monotonic() >= deadline:
                raise self._last_exc or ConnectError(
                    f"not connected to {self.config.broker} after {timeout:.1f} s"
                )

    def drain(self, timeout: float) -> bool:
        """Wait until every stored message was acknowledged by the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._outbox.depth > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop the threads (after up to ``drain_timeout`` s of delivery) and close the outbox.

        Undelivered messages stay in the outbox file and are sent by the next ``start()``.
        """
        if drain_timeout > 0 and self._threads:
            self.drain(drain_timeout)
        self._stop.set()
        # Wake the command thread; if its queue is full it sees the stop flag soon anyway.
        with contextlib.suppress(queue.Full):
            self._cmd_queue.put_nowait(None)
        for thread in self._threads:
            if thread is not threading.current_thread():  # close() from a command handler
                thread.join(timeout=10)
        self._threads = []
        self._outbox.close()

    def __enter__(self) -> MqttSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the network thread ------------------------------------------------------------------

    def _io_main(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff_initial, cfg.backoff_cap)
        client_id = cfg.client_id or f"edge-{cfg.fleet}-{cfg.device_id}"
        while not self._stop.is_set():
            try:
                # built per connection, so renewed certificate files are read on reconnect
                client = build_client(cfg, client_id, will=self._will())
                client.on_publish = self._on_publish
                client.on_message = self._on_message
                client.on_disconnect = self._on_disconnect
                connect_and_wait(client, cfg, timeout=min(10.0, cfg.keepalive), stop=self._stop)
                backoff.reset()
                self._serve(client)
            except ConfigError as exc:  # e.g. the CA file was removed after start: retry
                self._note_error(exc)
            except ConnectError as exc:
                if self._stop.is_set():
                    break
                self._note_error(exc)
            except Exception as exc:  # a bug or a vanished file must not end delivery for good
                log.exception("unexpected error in the sync network thread")
                self._note_error(SyncError(f"{type(exc).__name__}: {exc}"))
            else:
                if self._stop.is_set():
                    break
                self._reconnects += 1
                log.warning("connection to %s lost; reconnecting", cfg.broker)
            self._stop.wait(backoff.next_delay())

    def _guarded(self, name: str, loop: Callable[[], None]) -> Callable[[], None]:
        """Run ``loop`` until stopped; if it ever raises, log, count and run it again.

        Each loop contains its own errors; this is the net below them, so that no thread of
        sync dies silently while the status still says online.
        """

        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop()
                    return
                except BaseException:  # SystemExit included: it would end the thread silently
                    self._thread_restarts += 1
                    log.exception("sync thread %s failed; restarting it", name)
                    self._stop.wait(1.0)

        return run

    def _note_error(self, exc: SyncError) -> None:
        msg = str(exc)
        if msg != self._last_error:
            log.error("%s", msg)
        self._last_error = msg
        self._last_exc = exc

    def _serve(self, client: mqtt.Client) -> None:
        """One connected session: subscribe, announce, then send until the link drops."""
        self._inflight.clear()
        self._acked.clear()
        self._cursor = 0  # everything still in the outbox is unacknowledged: resend in order
        self._link_lost = False
        client.subscribe(self._topic(topics.COMMAND), qos=1)
        self._publish_status(client, "online")
        self._last_error = None
        self._last_exc = None
        self._connected_since = time.time()
        self._connected.set()
        log.info("connected to %s as %s", self.config.broker, self.device_id)
        try:
            while not self._link_lost:
                if self._stop.is_set():
                    self._goodbye(client)
                    return
                busy = self._pump(client)
                rc = client.loop(timeout=0.0 if busy else _IDLE_POLL)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._flush_acked(force=False)
                self._send_side_messages(client)
        finally:
            self._flush_acked(force=True)
            self._inflight.clear()
            self._connected.clear()
            with contextlib.suppress(Exception):  # the link may already be gone
                client.disconnect()

    def _pump(self, client: mqtt.Client) -> bool:
        """Hand outbox rows to paho up to the in-flight window; True if more are waiting."""
        room = self.config.inflight - len(self._inflight)
        if room > 0 and self._outbox.pending:
            try:  # pull journalled messages into SQLite to send them
                self._outbox.flush()
            except OutboxError as exc:  # e.g. a full disk: send what is committed meanwhile
                self._outbox_trouble(exc)
        last = self._outbox.last_rowid
        if room <= 0 or self._cursor >= last:
            return False
        rows = self._outbox.read_after(self._cursor, min(room, _READ_BATCH))
        if not rows:
            self._cursor = last  # the rows in between were evicted
            return False
        prefix = self._topic_prefix
        for row in rows:
            info = client.publish(prefix + row.stream, row.body, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._link_lost = True
                return False
            self._inflight[info.mid] = row.rowid
            self._cursor = row.rowid
        return len(rows) == min(room, _READ_BATCH) and len(self._inflight) < self.config.inflight

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        rowid = self._inflight.pop(mid, None)
        if rowid is None:  # status, heartbeat or ack: not from the outbox
            return
        if not self._acked:
            self._acked_since = time.monotonic()
        self._acked.append(rowid)
        self._sent += 1

    def _flush_acked(self, force: bool) -> None:
        if not self._acked:
            return
        if force or len(self._acked) >= _ACK_BATCH or not self._inflight or (
            time.monotonic() - self._acked_since >= _ACK_DELAY
        ):
            done, self._acked = self._acked, []
            try:
                self._outbox.remove(done)
            except OutboxError as exc:  # a failed delete only means a re-send later
                self._outbox_trouble(exc)

    def _outbox_trouble(self, exc: OutboxError) -> None:
        """Log an outbox failure once (it repeats until the cause goes away), not each time."""
        if str(exc) != self._outbox_problem:
            self._outbox_problem = str(exc)
            log.error("%s; delivery continues with what is stored", exc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self._topic(topics.COMMAND) or not msg.payload:
            return  # an empty message is how a retained one is cleared: not a request
        try:
            self._cmd_queue.put_nowait((msg.payload, bool(msg.retain)))
        except queue.Full:
            self.commands.count_error()
            ack = CommandAck(None, None, False, error="device busy: too many pending commands")
            self._acks_out.append(ack.to_json(self.device_id))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, *args: Any) -> None:
        self._link_lost = True

    def _send_side_messages(self, client: mqtt.Client) -> None:
        while self._acks_out:
            info = client.publish(self._topic(topics.ACK), self._acks_out[0], qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._acks_out.popleft()
        if self._heartbeat_due.is_set():
            self._heartbeat_due.clear()
            self._publish_status(client, "online")

    def _publish_status(self, client: mqtt.Client, state: str) -> None:
        now = time.time()
        status = {
            "state": state,
            "device": self.device_id,
            "fleet": self.config.fleet,
            "model": self.model,
            "version": self.app_version,
            "started": round(self._started_at, 3),
            "uptime_s": round(now - self._started_at, 1),
            "ts": round(now, 3),
        }
        stats = self._outbox.stats()
        if stats.quarantined:
            status["outbox_quarantined"] = stats.quarantined
        if stats.disk_full:
            status["outbox_disk_full"] = True
        client.publish(self._topic(topics.STATUS), json.dumps(status), qos=1, retain=True)
        seen = {"device": self.device_id, "ts": round(now, 3), "state": state}
        client.publish(self._topic(topics.SEEN), json.dumps(seen), qos=1, retain=True)

    def _goodbye(self, client: mqtt.Client) -> None:
        """Clean shutdown: mark ourselves offline (no Last Will is sent on DISCONNECT)."""
        self._publish_status(client, "offline")
        deadline = time.monotonic() + 2.0
        while client.want_write() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        for _ in range(5):  # give the broker a moment to PUBACK the status messages
            client.loop(timeout=0.02)

    def _will(self) -> Will:
        payload = {
            "state": "offline",
            "device": self.device_id,
            "fleet": self.config.fleet,
            "model": self.model,
            "version": self.app_version,
            "reason": "connection lost",
        }
        return Will(self._topic(topics.STATUS), json.dumps(payload).encode())

    def _topic(self, leaf: str) -> str:
        return self._topic_prefix + leaf

    # -- maintenance and commands ------------------------------------------------------------

    def _maint_main(self) -> None:
        interval = self.config.telemetry_interval
        delay = min(interval, 1.0)  # first report soon after start
        while not self._stop.wait(delay):
            delay = interval
            try:
                self._append(topics.TELEMETRY, self.telemetry_snapshot(), Priority.LOW)
            except OutboxError:
                pass  # a full disk: the outbox logged it once; status still says so
            except Exception:  # telemetry must never take the client down
                log.exception("could not store telemetry")
            self._heartbeat_due.set()

    def telemetry_snapshot(self) -> dict[str, Any]:
        """Runtime values plus the client's own: what one telemetry message carries."""
        values = self.telemetry.runtime_values()
        stats = self._outbox.stats()
        values.update(
            outbox_depth=stats.depth,
            outbox_bytes=stats.bytes,
            outbox_max_bytes=stats.max_bytes,
            outbox_dropped=stats.dropped_total,
            outbox_dropped_by_priority={str(k): v for k, v in sorted(stats.dropped.items())},
            outbox_disk_full=stats.disk_full,
            outbox_quarantined=stats.quarantined,
            sent=self._sent,
            connected=self._connected.is_set(),
            reconnects=self._reconnects,
            command_errors=self.commands.errors,
            thread_restarts=self._thread_restarts,
            uptime_s=round(time.time() - self._started_at, 1),
        )
        return values

    def _cmd_main(self) -> None:
        """Run requests one at a time; nothing a request does can end this loop."""
        while not self._stop.is_set():
            item = self._cmd_queue.get()
            if item is None:
                return
            data, retained = item
            ack = self.commands.handle(data, retained=retained)
            if ack is None:
                continue
            try:
                body = ack.to_json(self.device_id)
            except Exception as exc:  # e.g. an id that JSON cannot encode
                self.commands.count_error()
                log.warning("could not encode the ack of a command: %r", exc)
                body = CommandAck(None, ack.name, False, error="unencodable ack").to_json(
                    self.device_id
                )
            self._acks_out.append(body)

    def _cmd_ping(self, cmd: Command) -> Mapping[str, Any]:
        return {"pong": True, "uptime_s": round(time.time() - self._started_at, 1)}

    def _cmd_stats(self, cmd: Command) -> Mapping[str, Any]:
        return self.telemetry_snapshot()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("edge-ai-toolkit")
    except Exception:  # not installed as a distribution
        return "0+unknown"
