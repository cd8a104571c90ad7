"""sync under faults on a real full disk: does everything accepted arrive?

    .venv/bin/python benchmarks/bench_sync_faults.py [--rounds N] [--seed S]

Needs root (it mounts a 512 KB tmpfs for the outbox) and Mosquitto; says why and exits 0
without results where either is missing. Two scenarios, each against its own Mosquitto and a
QoS 1 subscriber with a persistent session that de-duplicates by message id:

1. **disk full, broker down -> broker back**: publish until the outbox refuses (disk full),
   keep trying while full, start the broker: every accepted message must arrive, and the
   outbox must accept again once it has drained.
2. **disk full + SIGKILL during writes**: a device process publishes flat out and is killed
   with SIGKILL, several rounds. Broker down in every other round, so the disk fills: the kill
   comes at a random moment, mostly within 50 ms after the first refusal (while the outbox
   commits, deletes and shrinks), otherwise mid-stream. Broker up in the others: killed after
   500-3000 more accepted messages while the publisher outruns delivery (it fills the disk
   too). Each restart must resume exactly after the last accepted message (seq never goes
   back); at the end every accepted message must have arrived exactly once after
   de-duplication by id, and no seq may carry two different messages.

Writes benchmarks/results/sync_faults.json and sync_faults.md; every number is from this run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import paho.mqtt.client as mqtt  # noqa: E402
from bench_sync import Mosquitto, host  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from sync import MqttSync, OutboxError  # noqa: E402
from sync.envelope import decode_envelope  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DISK = "512k"
PAD = "x" * 700  # frames that straddle pages, so a full disk cuts some of them short
FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 3600}


class SmallDisk:
    """A tmpfs of ``DISK`` bytes of our own, mounted for one scenario."""

    def __init__(self, where: Path) -> None:
        self.path = where
        where.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs",
                               str(where)], capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or "mount failed")

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class Collector:
    """The cloud side: a persistent QoS 1 session, every message kept, de-duplicated by id."""

    def __init__(self, port: int, device: str) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.by_id: dict[str, tuple[int, Any]] = {}
        self.subscribed = threading.Event()
        self.topic = f"edge/default/{device}/d"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"faults-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)  # fmt: skip
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the collector could not subscribe")

    def _on_message(self, client: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        env = decode_envelope(msg.payload)
        with self.lock:
            self.total += 1
            self.by_id.setdefault(env.id, (env.seq, env.payload))

    def seqs(self) -> dict[int, set[str]]:
        """seq -> the distinct message ids that carried it."""
        out: dict[int, set[str]] = defaultdict(set)
        with self.lock:
            for msg_id, (seq, _) in self.by_id.items():
                out[seq].add(msg_id)
        return out

    def wait_for(self, want: set[int], timeout: float) -> float | None:
        """Seconds until every seq in ``want`` has arrived, or None on timeout."""
        start = time.monotonic()
        while not want <= set(self.seqs()):
            if time.monotonic() - start > timeout:
                return None
            time.sleep(0.05)
        return time.monotonic() - start

    def payloads_match(self) -> bool:
        with self.lock:
            return all(p.get("k") == seq - 1 for seq, p in self.by_id.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LogCount(logging.Handler):
    """Counts what sync logs: the disk-full cause should appear once, tracebacks never."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, text: str, level: int = logging.ERROR) -> int:
        return sum(1 for r in self.records if r.levelno >= level and text in r.getMessage())


# -- scenario 1 ------------------------------------------------------------------------------


def disk_full_broker_down(work: Path) -> dict[str, Any]:
    disk = SmallDisk(work / "disk")
    broker = Mosquitto(work)
    logs = LogCount()
    logging.getLogger("sync").addHandler(logs)
    try:
        broker.start()
        collector = Collector(broker.port, "full")
        broker.stop()  # SIGTERM: the collector's session is saved
        s = MqttSync(broker.url, "full", disk.path / "o.db", **FAST).start()
        accepted, error = 0, ""
        start = time.monotonic()
        while True:
            try:
                s.publish("d", {"k": accepted, "pad": PAD})
                accepted += 1
            except OutboxError as exc:
                error = str(exc)
                break
        fill_s = time.monotonic() - start
        refused = 0
        for _ in range(200):  # the disk is full: these must be refused, not half-stored
            try:
                s.publish("d", {"k": accepted, "pad": PAD})
                accepted += 1
            except OutboxError:
                refused += 1
        broker.start()
        drain_s = collector.wait_for(set(range(1, accepted + 1)), 120)
        start = time.monotonic()
        while s.state().outbox.disk_full and time.monotonic() - start < 60:
            time.sleep(0.05)
        recovered_s = None if s.state().outbox.disk_full else time.monotonic() - start
        after = 0
        if recovered_s is not None:
            for _ in range(100):
                s.publish("d", {"k": accepted + after, "pad": PAD})
                after += 1
        after_ok = collector.wait_for(set(range(1, accepted + after + 1)), 60) is not None
        s.close()
        seqs = collector.seqs()
        result = {
            "disk": DISK,
            "payload_bytes": len(json.dumps({"k": 0, "pad": PAD})),
            "accepted_until_full": accepted,
            "first_refusal": error,
            "fill_seconds": round(fill_s, 3),
            "refused_while_full": refused,
            "delivered_unique": sum(1 for q in range(1, accepted + 1) if q in seqs),
            "lost": sum(1 for q in range(1, accepted + 1) if q not in seqs),
            "duplicates": collector.total - len(collector.by_id),
            "drain_seconds_after_broker_back": None if drain_s is None else round(drain_s, 2),
            "accepting_again_after_seconds": (None if recovered_s is None
                                              else round(recovered_s, 2)),  # fmt: skip
            "published_after_recovery": after,
            "delivered_after_recovery": after_ok,
            "payloads_intact": collector.payloads_match(),
            "disk_full_errors_logged": logs.count("disk full"),
            "tracebacks_logged": sum(1 for r in logs.records if r.exc_info),
            "cannot_rollback_logged": logs.count("cannot rollback", logging.DEBUG),
        }
        collector.close()
        return result
    finally:
        logging.getLogger("sync").removeHandler(logs)
        broker.stop()
        disk.close()


# -- scenario 2 ------------------------------------------------------------------------------


def child(broker: str, outbox: str) -> int:
    """The device process: publish k = next.. flat out, print each k that was accepted."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = MqttSync(broker, "crash", outbox, **FAST).start()
    k = s.next_seq("d") - 1
    print(f"resume {k}", flush=True)
    full_reported = False
    while True:
        try:
            receipt = s.publish("d", {"k": k, "pad": PAD})
        except OutboxError:
            if not full_reported:
                print("full", flush=True)
                full_reported = True
            time.sleep(0.002)
            continue
        if receipt.seq != k + 1:
            print(f"error: message {k} got seq {receipt.seq}", flush=True)
            return 3
        print(k, flush=True)
        k += 1


class Device:
    """The child process and a thread that follows what it has accepted."""

    def __init__(self, broker: str, outbox: Path, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", "--broker", broker, "--outbox", str(outbox)],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.resume: int | None = None
        self.last = -1
        self.full = threading.Event()
        self.errors: list[str] = []
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
            elif line == "full":
                self.full.set()
            else:
                self.errors.append(line)

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.thread.join(timeout=30)
        self.log.close()
        return self.last


def disk_full_sigkill(work: Path, rounds: int, rng: random.Random) -> dict[str, Any]:
    disk = SmallDisk(work / "disk")
    broker = Mosquitto(work)
    try:
        broker.start()
        collector = Collector(broker.port, "crash")
        outbox, log = disk.path / "o.db", work / "device.log"
        accepted = -1  # highest k whose publish() returned
        events: list[dict[str, Any]] = []
        resumed_ok = True
        for r in range(rounds):
            down = r % 2 == 0
            if down:
                broker.stop()
            dev = Device(broker.url, outbox, log)
            deadline = time.monotonic() + 60
            while dev.resume is None and time.monotonic() < deadline:
                time.sleep(0.01)
            resumed_ok &= dev.resume is not None and dev.resume == accepted + 1
            if down:  # kill during writes: some while the disk is full, some on the way there
                dev.full.wait(30) if rng.random() < 0.7 else time.sleep(rng.uniform(0.05, 0.4))
                time.sleep(rng.uniform(0, 0.05))
            else:
                target = (dev.resume or 0) + rng.randint(500, 3000)
                while dev.last < target and time.monotonic() < deadline:
                    time.sleep(0.005)
            last = dev.kill()
            events.append({"round": r + 1, "broker": "down" if down else "up",
                           "resumed_at": dev.resume, "accepted_up_to": last,
                           "disk_full_seen": dev.full.is_set()})  # fmt: skip
            accepted = max(accepted, last)
            if dev.errors:
                events[-1]["errors"] = dev.errors
            if down:
                broker.start()
        # A last clean run with the broker up delivers what is left.
        dev = Device(broker.url, outbox, log)
        deadline = time.monotonic() + 60
        while dev.resume is None and time.monotonic() < deadline:
            time.sleep(0.01)
        resumed_ok &= dev.resume is not None and dev.resume == accepted + 1
        stored = dev.resume or 0  # messages 0..stored-1 were accepted by some round
        arrived_s = collector.wait_for(set(range(1, stored + 1)), 180)
        dev.kill()
        seqs = collector.seqs()
        torn = [ln for ln in log.read_text(errors="replace").splitlines() if "skipped" in ln]
        result = {
            "disk": DISK,
            "rounds": rounds,
            "sigkills": rounds + 1,
            "events": events,
            "accepted_total": stored,
            "acknowledged_to_caller": accepted + 1,
            "every_restart_resumed_after_the_last_accepted": resumed_ok,
            "delivered_unique": sum(1 for q in range(1, stored + 1) if q in seqs),
            "lost": sum(1 for q in range(1, stored + 1) if q not in seqs),
            "seqs_with_two_messages": sum(1 for ids in seqs.values() if len(ids) > 1),
            "duplicates_dropped_by_id": collector.total - len(collector.by_id),
            "payloads_intact": collector.payloads_match(),
            "all_arrived_within_seconds": None if arrived_s is None else round(arrived_s, 2),
            "torn_journal_frames_skipped_on_replay": len(torn),
            "device_errors": sum(len(e.get("errors", [])) for e in events),
        }
        collector.close()
        return result
    finally:
        broker.stop()
        disk.close()


# -- report ----------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    a, b, h = r["disk_full_broker_down"], r["disk_full_sigkill"], r["host"]
    yes = {True: "yes", False: "**NO**", None: "-"}
    lines = [
        "# sync under faults: a full disk, a broker outage, SIGKILL",
        "",
        f"`{r['command']}` on {h['platform']}, {h['cpus']} CPUs, Python {h['python']}, "
        f"paho-mqtt {h['paho_mqtt']}, SQLite {h['sqlite']}, {h['mosquitto']}; {r['date']}. "
        f"Outbox on a {DISK} tmpfs; {a['payload_bytes']}-byte payloads.",
        "",
        "## 1. disk full with the broker down, then the broker back",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| messages accepted until the disk was full | {a['accepted_until_full']} |",
        f"| further publish() calls refused while full (of 200) | {a['refused_while_full']} |",
        f"| accepted messages delivered (unique) | {a['delivered_unique']} |",
        f"| accepted messages lost | {a['lost']} |",
        f"| duplicates (dropped by id) | {a['duplicates']} |",
        f"| seconds from broker start to the last accepted message | "
        f"{a['drain_seconds_after_broker_back']} |",
        f"| seconds until publish() accepts again | {a['accepting_again_after_seconds']} |",
        f"| 100 messages published after that delivered | "
        f"{yes[a['delivered_after_recovery']]} |",
        f"| payloads intact | {yes[a['payloads_intact']]} |",
        f"| disk-full errors logged / tracebacks / \"cannot rollback\" | "
        f"{a['disk_full_errors_logged']} / {a['tracebacks_logged']} / "
        f"{a['cannot_rollback_logged']} |",
        "",
        f"First refusal: `{a['first_refusal']}`",
        "",
        "## 2. disk full + SIGKILL during writes",
        "",
        "A device process publishes flat out and is SIGKILLed once per round. Broker down: "
        "killed at a random moment, mostly within 50 ms after the disk filled. Broker up: "
        "killed after 500-3000 more accepted messages while it outruns delivery. A last run "
        "with the broker up delivers the rest.",
        "",
        "| round | broker | resumed at k | accepted up to k | disk full seen |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for e in b["events"]:
        lines.append(f"| {e['round']} | {e['broker']} | {e['resumed_at']} | "
                     f"{e['accepted_up_to']} | {yes[e['disk_full_seen']]} |")  # fmt: skip
    lines += [
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| SIGKILLs | {b['sigkills']} |",
        f"| messages stored (publish() returned, or written just before a kill) | "
        f"{b['accepted_total']} |",
        f"| messages whose publish() returned before a kill | "
        f"{b['acknowledged_to_caller']} |",
        f"| every restart resumed right after the last accepted message | "
        f"{yes[b['every_restart_resumed_after_the_last_accepted']]} |",
        f"| delivered exactly once after de-duplication by id | {b['delivered_unique']} |",
        f"| lost | {b['lost']} |",
        f"| seq numbers given to two different messages | {b['seqs_with_two_messages']} |",
        f"| duplicates dropped by id | {b['duplicates_dropped_by_id']} |",
        f"| payloads intact | {yes[b['payloads_intact']]} |",
        f"| seconds until everything had arrived (last run) | "
        f"{b['all_arrived_within_seconds']} |",
        f"| journal replays that skipped a torn frame | "
        f"{b['torn_journal_frames_skipped_on_replay']} |",
        "",
        f"Verdict: **{'PASS' if r['pass'] else 'FAIL'}** (nothing accepted lost, no seq "
        "reused, every restart resumed after the last accepted message, the outbox accepts "
        "again after draining). Load average at the end: "
        f"{h['load_average_1_5_15']} (other work shares this machine).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="SIGKILL rounds in scenario 2")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--broker", help=argparse.SUPPRESS)
    p.add_argument("--outbox", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.broker, args.outbox)
    if os.geteuid() != 0:
        print("bench_sync_faults: skipped: mounting a 512 KB tmpfs needs root")
        return 0
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        print("bench_sync_faults: skipped: mosquitto not found (apt-get install mosquitto)")
        return 0
    with tempfile.TemporaryDirectory(prefix="sync-faults-") as tmp:
        try:
            first = disk_full_broker_down(Path(tmp) / "one")
            second = disk_full_sigkill(Path(tmp) / "two", args.rounds, random.Random(args.seed))
        except RuntimeError as exc:
            print(f"bench_sync_faults: skipped: cannot mount a small tmpfs here ({exc})")
            return 0
    ok = (
        first["lost"] == 0 and first["delivered_after_recovery"] and first["payloads_intact"]
        and first["refused_while_full"] == 200 and second["lost"] == 0
        and second["seqs_with_two_messages"] == 0 and second["payloads_intact"]
        and second["every_restart_resumed_after_the_last_accepted"]
        and second["device_errors"] == 0
    )
    command = "python benchmarks/bench_sync_faults.py" + (
        f" --rounds {args.rounds}" if args.rounds != 6 else "")
    report = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": host(),
        "disk_full_broker_down": first,
        "disk_full_sigkill": second,
        "pass": bool(ok),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sync_faults.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "sync_faults.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
