"""MQTT -> database: the console's ingest, one of N sharing a subscription.

- Data streams, telemetry and acks come through a shared subscription
  (``$share/GROUP/edge/FLEET/+/+``): the broker hands each message to one ingest process of
  GROUP, so ingest scales out by starting more. Retained status/seen/rollout messages are not
  delivered to shared subscriptions, so each process also subscribes to those directly
  (storing them is idempotent).
- A message is acknowledged to the broker (manual PUBACK) only after the batch holding it has
  been committed: an ingest that dies loses nothing the broker handed it; the broker re-sends
  it, and the (device, stream, seq, id) key drops the copy. MQTT 5's Receive Maximum lets
  ``receive_max`` messages be in flight while a batch is written. QoS 0 messages are not
  re-sent by anyone: at most ``qos0_max`` wait in memory, more are dropped and counted
  (``dropped_qos0``) while the database is slow or away.
- Parsing and writing run on one writer thread, not paho's: a malformed message is counted
  and skipped; a database that cannot be reached retries the same batch (nothing is
  acknowledged meanwhile); a database that refuses the batch's content gets it again one
  message at a time, so one poison message is counted (``rejected``) and skipped and the rest
  are stored; a failing hook (alerts, live updates) is counted; the thread never ends on an
  error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sync import topics
from sync.config import SyncConfig
from sync.connection import connect_and_wait, make_ssl_context
from sync.console.records import ROLLOUT, AckRow, MessageRow, RolloutRow, StatusRow, parse_message
from sync.console.store import Store, StoreError, StoreRejected
from sync.errors import PayloadError, SyncError

log = logging.getLogger("sync.console.ingest")

RETAINED_LEAVES = (topics.STATUS, topics.SEEN, ROLLOUT)


@dataclass
class IngestStats:
    """Counters since start. ``malformed`` and ``rejected`` (refused by the database)
    messages were skipped and acknowledged; ``dropped_qos0`` never reached the database (the
    in-memory queue was full); ``sequence_restarts`` were stored messages whose (device,
    stream, seq) an earlier message of another id holds (the device's outbox started over);
    ``malformed_fields`` were fields of stored messages left out as invalid (the rest kept)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    sequence_restarts: int = 0
    malformed: int = 0
    malformed_fields: int = 0
    rejected: int = 0
    dropped_qos0: int = 0
    ignored: int = 0
    batches: int = 0
    db_errors: int = 0
    hook_errors: int = 0
    last_malformed: str | None = None
    last_rejected: str | None = None
    last_db_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """What one committed batch held, for the hooks (alerts, live updates)."""

    messages: list[MessageRow] = field(default_factory=list)
    statuses: list[StatusRow] = field(default_factory=list)
    acks: list[AckRow] = field(default_factory=list)
    rollouts: list[RolloutRow] = field(default_factory=list)
    inserted: int = 0

    def add(self, record: Any) -> None:
        ROUTES[type(record)](self).append(record)

    def __len__(self) -> int:
        return len(self.messages) + len(self.statuses) + len(self.acks) + len(self.rollouts)

    def records(self) -> list[Any]:
        return [*self.messages, *self.statuses, *self.acks, *self.rollouts]


ROUTES: dict[type, Callable[[Batch], list[Any]]] = {
    MessageRow: lambda b: b.messages,
    StatusRow: lambda b: b.statuses,
    AckRow: lambda b: b.acks,
    RolloutRow: lambda b: b.rollouts,
}

BatchHook = Callable[[Batch], None]


_SHARED_ID, _DIRECT_ID = 1, 2


def _subscription_id(value: int) -> Properties:
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = value
    return props


def _only_shared_copy(msg: mqtt.MQTTMessage) -> bool:
    """A status/seen/rollout message delivered through the shared filter only: a copy."""
    leaf = msg.topic.rsplit("/", 1)[-1]
    if leaf not in RETAINED_LEAVES:
        return False
    ids = getattr(msg.properties, "SubscriptionIdentifier", None) or []
    return bool(ids) and _DIRECT_ID not in ids


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it: a PUBACK belongs to that one only
    received: float


class Ingest:
    """Subscribe, batch, store, acknowledge; ``hooks`` run after each committed batch."""

    def __init__(
        self,
        cfg: SyncConfig,
        store: Store,
        share: str | None = "console",
        session: str | None = None,
        batch_max: int = 500,
        batch_wait: float = 0.05,
        receive_max: int = 1000,
        qos0_max: int = 10_000,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.share = share
        self.session = session
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.receive_max = receive_max
        self.qos0_max = qos0_max
        self.stats = IngestStats()
        self.hooks: list[BatchHook] = []
        # QoS 1 messages are bounded by Receive Maximum (the broker sends no more until we
        # acknowledge); QoS 0 ones by counting them here.
        self._queue: queue.SimpleQueue[_Incoming | None] = queue.SimpleQueue()
        self._qos0_queued = 0
        self._qos0_lock = threading.Lock()
        self._stop = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="console-writer",
                                        daemon=True)  # fmt: skip
        self.client = self._build_client()

    # -- connection ----------------------------------------------------------------------------

    @property
    def filters(self) -> list[str]:
        fleet = self.cfg.fleet
        if not self.share:
            return [topics.filter_for(fleet, None, None)]
        return [topics.filter_for(fleet, None, None, share=self.share)] + [
            topics.filter_for(fleet, None, leaf) for leaf in RETAINED_LEAVES
        ]

    def _build_client(self) -> mqtt.Client:
        client_id = self.session or f"edge-console-{uuid.uuid4().hex[:12]}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True,
                             userdata={"errors": []})  # fmt: skip
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        if self.cfg.address.tls:
            client.tls_set_context(make_ssl_context(self.cfg))
            client.tls_insecure_set(self.cfg.tls_insecure)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.reconnect_delay_set(1, 30)
        return client

    def start(self, timeout: float = 10.0) -> Ingest:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.receive_max
        if self.session:  # the broker keeps our queue for a day while we are away
            props.SessionExpiryInterval = 86400
        options = {"clean_start": not self.session, "properties": props}
        self._writer.start()
        connect_and_wait(self.client, self.cfg, timeout=timeout, connect_options=options)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise SyncError("the broker did not confirm the console's subscriptions")
        return self

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._lock:
            self._generation += 1
        # Again after every reconnect. Subscription identifiers tell which filter delivered a
        # message: a retained-leaf message also matches the shared filter, and that copy is
        # dropped (the direct subscription brings it, retained ones included).
        first, *direct = self.filters
        c.subscribe([(first, 1)], properties=_subscription_id(_SHARED_ID))
        if direct:
            c.subscribe([(f, 1) for f in direct], properties=_subscription_id(_DIRECT_ID))

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._accept(c, msg)
        except Exception as exc:  # e.g. a topic that is not UTF-8: paho's thread must live on
            self.stats.received += 1
            self.stats.malformed += 1
            self.stats.last_malformed = f"unreadable message: {exc!r}"[:300]
            log.warning("skipping an unreadable message: %r", exc)
            if msg.qos > 0:
                with suppress(Exception):
                    c.ack(msg.mid, msg.qos)

    def _accept(self, c: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        # paho's thread only queues: parsing and the database happen on the writer thread.
        if self.share and _only_shared_copy(msg):
            if msg.qos > 0:
                c.ack(msg.mid, msg.qos)
            return
        if msg.qos == 0:
            with self._qos0_lock:
                if self._qos0_queued >= self.qos0_max:
                    self.stats.dropped_qos0 += 1
                    if self.stats.dropped_qos0 == 1 or self.stats.dropped_qos0 % 10_000 == 0:
                        log.warning("%d QoS 0 messages waiting for the database: dropping "
                                    "new ones (%d so far)", self.qos0_max,
                                    self.stats.dropped_qos0)  # fmt: skip
                    return
                self._qos0_queued += 1
        self._queue.put(_Incoming(msg.topic, msg.payload, msg.mid, msg.qos, self._generation,
                                  time.time()))  # fmt: skip

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Send on the ingest's connection (commands, alert notices)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SyncError(f"could not publish to {topic}: {mqtt.error_string(info.rc)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what has arrived, then disconnect."""
        self._stop.set()
        self._queue.put(None)
        if self._writer.is_alive():
            self._writer.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # -- writer --------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            items, last = self._collect()
            if items:
                try:
                    self._write(items)
                except StoreError as exc:  # only when stopping: the broker keeps what is unacked
                    log.error("%s: %d messages left unacknowledged for the broker to re-send",
                              exc, len(items))  # fmt: skip
                except Exception as exc:  # a bug here must not end ingest silently
                    log.exception("console writer: unexpected error; %d messages left "
                                  "unacknowledged (re-sent after a reconnect)", len(items))
                    self.stats.last_db_error = f"{type(exc).__name__}: {exc}"
            if last:
                return

    def _collect(self) -> tuple[list[_Incoming], bool]:
        """Up to ``batch_max`` messages, waiting at most ``batch_wait`` after the first."""
        try:
            first = self._queue.get(timeout=0.5)
        except queue.Empty:
            return [], self._stop.is_set()
        if first is None:
            return [], True
        items = [first]
        deadline = time.monotonic() + self.batch_wait
        while len(items) < self.batch_max:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            items.append(item)
        qos0 = sum(item.qos == 0 for item in items)
        if qos0:
            with self._qos0_lock:
                self._qos0_queued -= qos0
        return items, False

    def _write(self, items: list[_Incoming]) -> None:
        batch = Batch()
        for item in items:
            self.stats.received += 1
            try:
                record = parse_message(item.topic, item.payload, item.received)
            except Exception as exc:  # PayloadError, or a parser bug: this message only
                self.stats.malformed += 1
                self.stats.last_malformed = f"{item.topic:.120}: {exc}"[:300]
                log.warning("skipping a malformed message on %.120s: %s", item.topic,
                            exc if isinstance(exc, PayloadError) else repr(exc))  # fmt: skip
                continue
            if record is None:
                self.stats.ignored += 1
            else:
                for why in getattr(record, "bad_fields", ()):
                    self.stats.malformed_fields += 1
                    self.stats.last_malformed = f"{item.topic:.120}: {why}"[:300]
                    log.warning("left out a malformed field on %.120s: %s", item.topic, why)
                batch.add(record)
        if len(batch):
            batch = self._store(batch)
            self.stats.stored += batch.inserted
            self.stats.duplicates += len(batch.messages) - batch.inserted
            self.stats.batches += 1
        self._ack(items)
        if len(batch):
            for hook in self.hooks:
                try:
                    hook(batch)
                except Exception as exc:
                    self.stats.hook_errors += 1
                    log.warning("console hook %r failed: %r", hook, exc)

    def _store(self, batch: Batch) -> Batch:
        """Commit the batch; if the database refuses its content, commit it one record at a
        time and skip (and count) the ones refused. Returns what was stored."""
        try:
            self._commit(batch)
            return batch
        except StoreRejected as exc:
            log.warning("%s; writing that batch one message at a time", exc)
        except StoreError:
            raise  # only when stopping: nothing of it is acknowledged
        except Exception as exc:  # a bug must not stall ingest either
            log.warning("writing a batch failed (%r); writing it one message at a time", exc)
        kept = Batch()
        for record in batch.records():
            single = Batch()
            single.add(record)
            try:
                self._commit(single)
            except StoreError as exc:
                if not isinstance(exc, StoreRejected):
                    raise
                self._reject(record, str(exc))
                continue
            except Exception as exc:
                self._reject(record, repr(exc))
                continue
            kept.add(record)
            kept.inserted += single.inserted
        return kept

    def _reject(self, record: Any, why: str) -> None:
        self.stats.rejected += 1
        what = f"{record.device}: {why}"
        self.stats.last_rejected = what[:300]
        log.warning("skipping a message the database refused: %s", what)

    def _commit(self, batch: Batch) -> None:
        """Write, retrying while the database cannot be reached (or until told to stop)."""
        delay = 0.5
        while True:
            try:
                result = self.store.write(batch.messages, batch.statuses, batch.acks,
                                          batch.rollouts)  # fmt: skip
                batch.inserted = result.inserted
                self.stats.sequence_restarts += result.restarts
                return
            except StoreRejected:
                raise
            except StoreError as exc:
                self.stats.db_errors += 1
                self.stats.last_db_error = str(exc)
                log.error("%s; retrying in %.1f s (nothing is acknowledged meanwhile)",
                          exc, delay)  # fmt: skip
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)

    def _ack(self, items: list[_Incoming]) -> None:
        with self._lock:
            generation = self._generation
        for item in items:
            if item.qos > 0 and item.generation == generation:
                self.client.ack(item.mid, item.qos)
