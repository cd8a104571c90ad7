"""Acceptance: nothing the device accepted is lost, whatever the broker and the device do.

What is killed and how, and why:
- The broker is stopped twice with SIGTERM and restarted. Mosquitto keeps its queues in
  memory and writes them to its persistence file on a clean shutdown (and every
  ``autosave_interval``). A broker killed with SIGKILL loses what it acknowledged since its
  last save: those messages were PUBACKed, so the device rightly deleted them, and the loss is
  the broker's, not something a device can prevent. Claiming zero loss across a SIGKILLed
  Mosquitto would be dishonest, so the 20,000-message test uses SIGTERM (a restart, an
  upgrade, a crash-free failover); ``test_hard_broker_kill`` below checks what *is* the
  device's job after a SIGKILLed broker: everything published while it was down arrives.
- The broker is stalled with SIGSTOP for longer than the keepalive, then resumed.
- The publisher (the device process) is killed with SIGKILL and restarted on the same outbox.
The subscriber uses a persistent session (clean_session=False, QoS 1) so the broker queues
for it while it is disconnected, and it de-duplicates by message id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path

from synctest_broker import Broker, subprocess_env, wait_for
from synctest_publisher import payload

from sync import MqttSync
from sync.envelope import decode_envelope

PUBLISHER = Path(__file__).with_name("synctest_publisher.py")
TOTAL = 20_000
RATE = 1000.0  # messages per second, steady
PAD = 100


class Publisher:
    """The device as a child process; a thread follows which messages it has accepted."""

    def __init__(self, broker: Broker, outbox: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PUBLISHER), "--broker", broker.url, "--outbox", str(outbox),
             "--total", str(TOTAL), "--rate", str(RATE), "--pad", str(PAD), "--drain", "120"],
            stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        self.resume: int | None = None
        self.last = -1  # highest k whose publish() returned
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # torn by SIGKILL
            line = line.strip()
            if line.isdigit():
                self.last = int(line)
            elif line.startswith("resume "):
                self.resume = int(line.split()[1])
            else:
                self.lines.append(line)

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.thread.join(timeout=30)
        return self.last


def test_20000_messages_survive_broker_kills_a_stall_and_a_device_sigkill(
    broker, tmp_path, recorder_factory, record_property
):
    rec = recorder_factory(broker.port, ["edge/default/pub/s0", "edge/default/pub/s1"],
                           session="fault-subscriber")
    outbox = tmp_path / "device.db"
    pub = Publisher(broker, outbox)
    events = []

    def at(k: int) -> None:
        wait_for(lambda: pub.last >= k or pub.proc.poll() is not None, 120, f"message {k}")
        assert pub.proc.poll() is None, pub.lines

    at(2_000)
    broker.stop(signal.SIGTERM)  # broker killed (1): clean stop, restart 1.5 s later
    events.append(("broker SIGTERM", pub.last))
    wait_for(lambda: pub.last >= 3_500, 60, "publishing while the broker is down")
    broker.start()

    at(6_000)
    broker.pause()  # stall: longer than the device keepalive (2 s)
    events.append(("broker SIGSTOP", pub.last))
    wait_for(lambda: pub.last >= 10_000, 60, "publishing while the broker is stalled")
    broker.resume()

    at(12_000)
    accepted = pub.kill()  # the device process dies mid-stream
    events.append(("publisher SIGKILL", accepted))
    pub = Publisher(broker, outbox)
    wait_for(lambda: pub.resume is not None, 60, "the restarted publisher")
    assert pub.resume >= accepted + 1, "a message accepted before SIGKILL was lost"

    at(15_000)
    broker.stop(signal.SIGTERM)  # broker killed (2)
    events.append(("broker SIGTERM", pub.last))
    wait_for(lambda: pub.last >= 16_500, 60, "publishing while the broker is down")
    broker.start()

    pub.proc.wait(timeout=240)
    pub.thread.join(timeout=30)
    assert pub.proc.returncode == 0 and "drained" in pub.lines, pub.lines

    expected = {(f"s{k % 2}", k // 2 + 1) for k in range(TOTAL)}

    def unique_keys() -> set[tuple[str, int]]:
        return {(m.topic.rsplit("/", 1)[1], decode_envelope(m.payload).seq)
                for m in list(rec.messages)}

    wait_for(lambda: unique_keys() >= expected, 120, "every message at the subscriber")

    with rec.lock:
        received = list(rec.messages)
    by_id: dict[str, bytes] = {}
    first_seen: dict[str, list[int]] = defaultdict(list)
    for m in received:
        env = decode_envelope(m.payload)
        if env.id in by_id:
            assert by_id[env.id] == m.payload, "a re-send changed the message"
            continue
        by_id[env.id] = m.payload
        first_seen[env.stream].append(env.seq)
        k = (env.seq - 1) * 2 + int(env.stream[1:])
        assert env.payload == payload(k, PAD), f"message {k} arrived altered"
    keys = Counter((decode_envelope(b).stream, decode_envelope(b).seq) for b in by_id.values())
    assert set(keys) == expected
    assert max(keys.values()) == 1, "one (stream, seq) was given to two different messages"
    for stream, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"{stream}: first deliveries out of order"
    duplicates = len(received) - len(by_id)
    record_property("duplicates", duplicates)
    record_property("events", events)
    print(f"\nfault test: {len(by_id)} unique messages, {duplicates} duplicates "
          f"(dropped by id), events at message k: {events}")


def test_hard_broker_kill_delivers_everything_published_while_it_was_down(
    tmp_path, recorder_factory
):
    work = tmp_path / "broker"
    work.mkdir()
    broker = Broker(work, extra="autosave_interval 1").start()
    try:
        rec = recorder_factory(broker.port, ["edge/default/hard/detections"], session="hard-sub")
        # Wait for an autosave that includes the subscriber's session, so it survives SIGKILL.
        db = work / "mosquitto.db"
        wait_for(db.exists, 10, "mosquitto autosave")
        mtime = db.stat().st_mtime_ns
        wait_for(lambda: db.stat().st_mtime_ns > mtime, 10, "a second autosave")
        with MqttSync(broker.url, "hard", tmp_path / "hard.db", keepalive=2,
                      backoff_initial=0.05, backoff_cap=0.5) as s:
            for i in range(500):
                s.publish("detections", {"i": i})
            assert s.drain(30)
            broker.stop(signal.SIGKILL)
            for i in range(500, 1500):
                s.publish("detections", {"i": i})
            assert s.state().outbox.depth >= 1000
            broker.start()
            wait_for(
                lambda: {decode_envelope(m.payload).seq for m in list(rec.messages)}
                >= set(range(501, 1501)),
                60,
                "the messages published while the broker was dead",
            )
            assert s.drain(30)
    finally:
        broker.stop()
