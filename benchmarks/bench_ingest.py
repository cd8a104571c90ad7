"""Fleet console: sustained ingest rate into SQLite and PostgreSQL with 1 and 2 `edge-fleet
serve` processes on one shared subscription, and the dashboard API's latency while 1,000
simulated devices report once a second.

    .venv/bin/python benchmarks/bench_ingest.py [--messages 40000] [--api-seconds 20]

Starts its own Mosquitto and a throwaway PostgreSQL (Debian's postgresql package, the tests'
helper) on loopback ports. Messages are published by 4 `mosquitto_pub` processes (C, QoS 1)
so the publisher is not the bottleneck; the ingest rate is stored rows over time, read from
the database. Writes benchmarks/results/console.json and console.md; every number is
measured in this run, with the host's load average beside it (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "sync"), str(ROOT / "tests" / "sync" / "console")]

import paho.mqtt.client as mqtt  # noqa: E402
from bench_sync import Mosquitto, host  # noqa: E402
from consoletest_pg import PgServer, pg_bindir  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from sync.console.store import open_store  # noqa: E402
from sync.envelope import encode_envelope  # noqa: E402

GOAL_PG_2PROC = 5_000  # msg/s into PostgreSQL with 2 ingest processes (issue 12)
PUBLISHERS = 4
PAYLOAD = {"label": "person", "score": 0.93, "box": [112, 40, 301, 388], "track": 17,
           "pad": "x" * 100}


def count(db: str) -> int:
    store = open_store(db, migrate_schema=False)
    try:
        return int(store.query("SELECT COUNT(*) AS n FROM messages")[0]["n"])
    finally:
        store.close()


def serve(broker: str, db: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sync.fleet", "--broker", broker, "serve",
                             "--db", db, *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "subscribed" in line:
            return proc
    raise RuntimeError(f"edge-fleet serve did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err.strip().splitlines()[-1] if err.strip() else ""


def message_files(folder: Path, total: int) -> list[tuple[str, Path]]:
    """One file of envelopes per publisher (one device each), one envelope per line."""
    per = total // PUBLISHERS
    body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    files = []
    for k in range(PUBLISHERS):
        device = f"bench-{k}"
        path = folder / f"{device}.txt"
        with path.open("wb") as f:
            for seq in range(1, per + 1):
                f.write(encode_envelope(uuid.uuid4().hex, device, "detections", seq,
                                        time.time(), body) + b"\n")
        files.append((f"edge/default/{device}/detections", path))
    return files


def ingest_run(broker: Mosquitto, db: str, procs: int, files: list[tuple[str, Path]],
               total: int) -> dict[str, Any]:
    workers = [serve(broker.url, db, "--no-web", "--share", "bench") for _ in range(procs)]
    time.sleep(0.5)
    t0 = time.monotonic()
    pubs = [subprocess.Popen(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-l", "-t",
                              topic], stdin=path.open("rb")) for topic, path in files]
    samples: list[tuple[float, int]] = []
    pub_done = None
    deadline = t0 + 600
    while True:
        n = count(db)
        now = time.monotonic()
        samples.append((now - t0, n))
        if pub_done is None and all(p.poll() is not None for p in pubs):
            pub_done = now - t0
        if n >= total or now > deadline:
            break
        time.sleep(0.2)
    summaries = [stop(w) for w in workers]
    for p in pubs:
        p.wait(30)
    done = samples[-1][0]
    lo = next(t for t, n in samples if n >= 0.1 * total)
    hi = next(t for t, n in samples if n >= 0.9 * total)
    return {
        "processes": procs, "messages": total, "stored": samples[-1][1],
        "seconds": round(done, 2), "rate_msg_s": round(total / done),
        "steady_rate_msg_s": round(0.8 * total / (hi - lo)) if hi > lo else None,
        "publishers_done_s": round(pub_done, 2) if pub_done else None,
        "publish_rate_msg_s": round(total / pub_done) if pub_done else None,
        "process_summaries": summaries,
    }


class Fleet1000(threading.Thread):
    """1,000 simulated devices, each reporting telemetry once a second (one paho client)."""

    def __init__(self, port: int, devices: int = 1000) -> None:
        super().__init__(daemon=True)
        self.devices = [f"sim-{i:04d}" for i in range(devices)]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-1000")
        self.client.max_inflight_messages_set(1000)
        self.acked = 0  # PUBACKed by the broker: what the console can be asked to store
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop_event = threading.Event()
        self.sent = 0
        self.late_s = 0.0
        rng = random.Random(3)
        self.base = {d: rng.uniform(15, 40) for d in self.devices}
        for d in self.devices:
            status = {"state": "online", "device": d, "model": "det-int8", "version": "1",
                      "ts": time.time()}
            self.client.publish(f"edge/default/{d}/status", json.dumps(status), qos=1,
                                retain=True)

    def _on_publish(self, *args: Any) -> None:
        self.acked += 1

    def run(self) -> None:
        seq = 0
        tick = time.monotonic()
        while not self.stop_event.is_set():
            seq += 1
            for d in self.devices:
                values = {"fps": 25.0, "latency_p95_ms": round(self.base[d] * random.uniform(
                    0.9, 1.1), 2), "outbox_depth": 0, "drift": {"brightness_psi": 0.05}}
                body = encode_envelope(uuid.uuid4().hex, d, "telemetry", seq, time.time(),
                                       json.dumps(values).encode())
                self.client.publish(f"edge/default/{d}/telemetry", body, qos=1)
                self.sent += 1
            tick += 1.0
            self.late_s = max(self.late_s, time.monotonic() - tick)
            self.stop_event.wait(max(0.0, tick - time.monotonic()))

    def close(self) -> None:
        self.stop_event.set()
        self.join(10)
        deadline = time.monotonic() + 60
        while self.acked < self.sent + len(self.devices) and time.monotonic() < deadline:
            time.sleep(0.1)  # statuses + telemetry all PUBACKed before we hang up
        self.client.disconnect()
        self.client.loop_stop()


def api_run(broker: Mosquitto, db: str, seconds: float) -> dict[str, Any]:
    port = Mosquitto(Path(tempfile.mkdtemp())).port  # a free port (nothing started)
    proc = serve(broker.url, db, "--listen", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    fleet = Fleet1000(broker.port)
    fleet.start()
    time.sleep(5)  # every device has reported a few times
    paths = {"devices": "/api/devices", "alerts": "/api/alerts?open=1",
             "events": "/api/events?limit=50",
             "telemetry": "/api/devices/sim-0042/telemetry?since={since}"}
    times: dict[str, list[float]] = {k: [] for k in paths}
    sizes: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, path in paths.items():
            url = base + path.format(since=time.time() - 60)
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read()
            times[name].append((time.perf_counter() - t) * 1000)
            sizes[name] = len(body)
    fleet.close()
    deadline = time.monotonic() + 60
    while count(db) < fleet.acked - len(fleet.devices) and time.monotonic() < deadline:
        time.sleep(0.2)  # what was in flight when the simulator stopped
    stored = count(db)
    summary = stop(proc)
    return {
        "devices": len(fleet.devices), "reports_per_s": len(fleet.devices),
        "seconds": seconds, "telemetry_sent": fleet.sent,
        "telemetry_acked_by_broker": fleet.acked - len(fleet.devices), "telemetry_stored": stored,
        "simulator_max_lag_s": round(fleet.late_s, 2), "process_summary": summary,
        "endpoints": {name: {"requests": len(v), "p50_ms": round(statistics.median(v), 1),
                             "p95_ms": round(sorted(v)[int(0.95 * (len(v) - 1))], 1),
                             "bytes": sizes.get(name)} for name, v in times.items()},
    }


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Fleet console: ingest and API", "",
             f"Host: {r['host']['cpus']} CPUs, load average (1/5/15 min) at start "
             f"{r['host']['load_average_1_5_15']}, at end {r['load_average_end']}"
             " (a shared machine: other work was running).", "",
             "## Sustained ingest (`edge-fleet serve --no-web`, shared subscription)", "",
             f"{r['messages']} messages of ~330 bytes from {PUBLISHERS} `mosquitto_pub -q 1` "
             "processes; rate = stored rows over time, read from the database.", "",
             "| database | ingest processes | total rate (msg/s) | steady 10-90 % (msg/s) | "
             "publishers' rate (msg/s) |", "|---|---|---|---|---|"]
    for row in r["ingest"]:
        lines.append(f"| {row['database']} | {row['processes']} | {row['rate_msg_s']} | "
                     f"{row['steady_rate_msg_s']} | {row['publish_rate_msg_s']} |")
    pg2 = next(x for x in r["ingest"] if x["database"] == "postgresql" and x["processes"] == 2)
    verdict = "met" if pg2["rate_msg_s"] >= GOAL_PG_2PROC else "NOT met"
    lines += ["", f"Goal >= {GOAL_PG_2PROC} msg/s into PostgreSQL with 2 processes: {verdict} "
              f"({pg2['rate_msg_s']} msg/s).", "",
              "## Dashboard API while 1,000 devices report once a second", "",
              "| database | endpoint | requests | p50 (ms) | p95 (ms) | response bytes |",
              "|---|---|---|---|---|---|"]
    for db, run in r["api"].items():
        for name, e in run["endpoints"].items():
            lines.append(f"| {db} | {name} | {e['requests']} | {e['p50_ms']} | {e['p95_ms']} "
                         f"| {e['bytes']} |")
    for db, run in r["api"].items():
        lines.append(f"\n{db}: {run['telemetry_sent']} telemetry messages sent, "
                     f"{run['telemetry_acked_by_broker']} accepted by the broker, "
                     f"{run['telemetry_stored']} stored; simulator's worst lag "
                     f"{run['simulator_max_lag_s']} s.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--api-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if pg_bindir() is None:
        print("no PostgreSQL server binaries: apt-get install postgresql", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"host": host(), "messages": args.messages, "ingest": [],
                              "api": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        pg = PgServer(pg_bindir()).start()
        try:
            files = message_files(work, args.messages)
            total = PUBLISHERS * (args.messages // PUBLISHERS)
            for database in ("sqlite", "postgresql"):
                for procs in (1, 2):
                    db = (str(work / f"ingest-{procs}.db") if database == "sqlite"
                          else pg.create_database())
                    open_store(db).close()  # schema first, so the processes only ingest
                    row = ingest_run(broker, db, procs, files, total)
                    result["ingest"].append({"database": database, **row})
                    print(f"{database} x{procs}: {row['rate_msg_s']} msg/s", flush=True)
            for database in ("sqlite", "postgresql"):
                db = str(work / "api.db") if database == "sqlite" else pg.create_database()
                result["api"][database] = api_run(broker, db, args.api_seconds)
                print(f"api {database}: {result['api'][database]['endpoints']}", flush=True)
        finally:
            pg.stop()
            broker.stop()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "console.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "console.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
