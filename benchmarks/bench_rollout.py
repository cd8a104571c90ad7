"""Fleet rollout at scale: one broker, N devices (default 50), a 20 MB signed bundle over MQTT.

    .venv/bin/python benchmarks/bench_rollout.py [--devices 50] [--mb 20] [--quick]

One device is a real `edge-run --store` process on a looping folder source at 30 frames/s,
publishing every result and a telemetry message per second; the other N-1 are simulated in
one helper process (this script with --simulate): each has its own model store, deploy agent,
MQTT connection and a Pipeline at 5 frames/s, so each downloads, verifies, activates and runs
its health gate for real (errors and NaN; the speed check is off with --min-speed-ratio 0: 49
devices sharing one Python process on 2 cores cannot time themselves). The measured device is
in the big wave (the canary is another one), so its transfer overlaps everyone else's.

Measured: seconds from `edge-fleet deploy` to every device healthy; bytes the broker sent
(Mosquitto's $SYS/broker/bytes/sent); the measured device's results per second while the
wave downloads (from its first download report until the last device of the wave has its
bundle), as a ratio of before (goal >= 0.9); its results' and telemetry's latency p95
(publish -> received by the fleet) before and in that window. Writes
benchmarks/results/rollout.json and rollout.md. The machine is shared (2 cores): all N
devices, the broker and the fleet tool compete for the same CPU, which a real fleet does not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "sync"))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

GOAL_FPS_RATIO = 0.9
MEASURED = "dev-00"


def simulate(args: argparse.Namespace) -> int:
    """N-1 devices in this process, until stdin closes."""
    from edge_sdk.deploy_agent import DeployAgent
    from edge_sdk.hotswap import SwappableModel
    from edge_sdk.model import load
    from edge_sdk.pipeline import Pipeline
    from edge_sdk.sources import Source
    from edge_sdk.store import Store
    from edge_sdk.store_run import LoopingReader
    from edge_sdk.trust import verify_bundle

    running = []
    for i in range(1, args.simulate + 1):
        device = f"dev-{i:02d}"
        store = Store(Path(args.dir) / device)
        store.recover()
        if store.active() is None:
            store.seed(Path(args.seed), verify_bundle(args.seed, args.trust))
        model = SwappableModel(load(store.path(store.active().slot), trust=args.trust))
        pipeline = Pipeline(Source(LoopingReader(args.frames, 5.0)), model).start()
        agent = DeployAgent(store, model, broker=args.broker, fleet="default", device=device,
                            trust=args.trust).start()
        running.append((pipeline, agent))
    print("ready", flush=True)
    sys.stdin.read()
    for pipeline, agent in running:
        agent.close()
        pipeline.stop()
    return 0


class Observer:
    """The fleet's view: deployment reports, the measured device's results and telemetry,
    and the broker's byte counter."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.reports: dict[str, dict] = {}
        self.results: list[tuple[float, float]] = []  # (received, latency s)
        self.telemetry: list[tuple[float, float]] = []
        self.bytes_sent = 0
        self.armed = False  # set at deploy: from then on, note when each device has its bundle
        self.downloaded: dict[str, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("edge/default/+/deployment", 1),
                               (f"edge/default/{MEASURED}/detections", 1),
                               (f"edge/default/{MEASURED}/telemetry", 1),
                               ("$SYS/broker/bytes/sent", 0)])
        self.client.loop_start()

    def on_message(self, c, u, msg) -> None:
        now = time.time()
        with self.lock:
            if msg.topic.startswith("$SYS"):
                self.bytes_sent = int(msg.payload)
            elif msg.topic.endswith("/deployment") and msg.payload:
                device, body = msg.topic.split("/")[2], json.loads(msg.payload)
                self.reports[device] = body
                if self.armed and body.get("state") not in ("queued", "downloading", "idle"):
                    self.downloaded.setdefault(device, now)
            else:
                ts = json.loads(msg.payload)["ts"]
                target = self.results if msg.topic.endswith("detections") else self.telemetry
                target.append((now, now - ts))

    def versions(self) -> dict[str, int]:
        with self.lock:
            return {d: (r.get("active") or {}).get("version") for d, r in self.reports.items()}

    def window(self, series: str, start: float, end: float) -> dict:
        with self.lock:
            points = [lat for t, lat in getattr(self, series) if start <= t < end]
        span = max(end - start, 1e-9)
        ranked = sorted(points)
        p95 = ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))] * 1e3 if ranked else None
        return {"messages": len(points), "per_s": round(len(points) / span, 2),
                "latency_p95_ms": None if p95 is None else round(p95, 1)}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_rollout: timed out waiting for {what}")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--mb", type=float, default=20.0, help="bundle size in MB")
    parser.add_argument("--quick", action="store_true", help="10 devices, 5 MB")
    parser.add_argument("--simulate", type=int, help=argparse.SUPPRESS)
    for hidden in ("--broker", "--dir", "--trust", "--seed", "--frames"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        return simulate(args)
    if args.quick:
        args.devices, args.mb = 10, 5.0

    from synctest_broker import Broker

    from sync import fleet
    from tests.fleet.fleet_helpers import frames_folder, make_keys, signed_bundle

    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        tmp = Path(tmp)
        (tmp / "broker").mkdir()
        broker = Broker(tmp / "broker", extra="sys_interval 1").start()
        private, public = make_keys(tmp / "keys")
        v1 = signed_bundle(tmp / "v1", private, 1, seed=1)
        v2 = signed_bundle(tmp / "v2", private, 2, seed=2, extra_mb=args.mb)
        size = sum(p.stat().st_size for p in v2.iterdir())
        frames = frames_folder(tmp / "frames", count=8)
        config = tmp / "sync.ini"
        config.write_text("[sync]\ntelemetry_interval = 1\n")
        observer = Observer(broker.port)
        cmd = [sys.executable, "-m", "edge_sdk.cli", "--store", str(tmp / MEASURED), "--source",
               str(frames), "--mqtt", broker.url, "--device-id", MEASURED, "--loop-fps", "30",
               "--trust", str(public), "--config", str(config), "--seed", str(v1), "-q"]
        device = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "device.log", "ab"))  # noqa: SIM115
        sim = subprocess.Popen(
            [sys.executable, __file__, "--simulate", str(args.devices - 1), "--broker",
             broker.url, "--dir", str(tmp / "sim"), "--trust", str(public), "--seed", str(v1),
             "--frames", str(frames)], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=open(tmp / "sim.log", "ab"))  # noqa: SIM115
        try:
            sim.stdout.readline()
            names = [f"dev-{i:02d}" for i in range(args.devices)]
            wait_for(lambda: all(observer.versions().get(n) == 1 for n in names), 300,
                     "every device on v1")
            time.sleep(3.0)
            before_start = time.time()
            time.sleep(10.0)
            before_end = time.time()
            bytes_before = observer.bytes_sent
            order = ["dev-01", MEASURED] + names[2:]
            result: dict = {}

            def deploy() -> None:
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    result["code"] = fleet.main(
                        ["--broker", broker.url, "deploy", str(v2), *sum(
                            (["--device", n] for n in order), []), "--canary", "1", "--wave",
                         str(args.devices), "--gate-frames", "10", "--min-speed-ratio", "0",
                         "--wait", "--timeout",
                         "1800", "--state", str(tmp / "rollouts.json")])
                result["out"], result["err"] = out.getvalue(), err.getvalue()

            started = time.time()
            observer.armed = True
            thread = threading.Thread(target=deploy)
            thread.start()
            wait_for(lambda: "code" in result or observer.reports.get(MEASURED, {}).get(
                "state") == "downloading", 1200, "the measured device downloading")
            if "code" in result:
                raise SystemExit(f"bench_rollout: the rollout ended early: {result['err']}")
            transfer_start = time.time()
            wait_for(lambda: "code" in result or all(observer.versions().get(n) == 2
                                                      for n in names), 1800, "every device on v2")
            if result.get("code"):
                raise SystemExit(f"bench_rollout: the rollout failed: {result['err']}")
            all_healthy = time.time()
            own_end = observer.downloaded[MEASURED]
            transfer_end = max(observer.downloaded.values())  # the wave's last download
            thread.join(120)
            time.sleep(1.5)  # the $SYS counter is published once a second
            bytes_sent = observer.bytes_sent - bytes_before
            states = {n: observer.reports[n].get("state") for n in names}
        finally:
            sim.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                sim.wait(30)
            sim.kill()
            device.kill()
            broker.proc.kill()
        before = observer.window("results", before_start, before_end)
        during = observer.window("results", transfer_start, transfer_end)
        tel_before = observer.window("telemetry", before_start, before_end)
        tel_during = observer.window("telemetry", transfer_start, transfer_end)
    ratio = during["per_s"] / before["per_s"] if before["per_s"] else None
    report = {
        "devices": args.devices, "bundle_bytes": size, "deploy_exit_code": result.get("code"),
        "healthy": sum(s == "healthy" for s in states.values()),
        "seconds_deploy_to_all_healthy": round(all_healthy - started, 1),
        "broker_bytes_sent": bytes_sent,
        "broker_bytes_per_device": round(bytes_sent / args.devices),
        "measured_device_download_s": round(own_end - transfer_start, 2),
        "wave_transfer_s": round(transfer_end - transfer_start, 2),
        "results_before": before, "results_during_transfer": during,
        "fps_ratio_during_transfer": None if ratio is None else round(ratio, 3),
        "fps_ratio_goal": GOAL_FPS_RATIO,
        "telemetry_before": tel_before, "telemetry_during_transfer": tel_during,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "note": "shared 2-core machine; all devices, broker and fleet tool on it"},
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        ("devices (1 real process + simulated)", args.devices),
        ("bundle size", f"{size / 1e6:.1f} MB"),
        ("healthy after the rollout", f"{report['healthy']} / {args.devices}"),
        ("deploy -> all healthy", f"{report['seconds_deploy_to_all_healthy']} s"),
        ("broker bytes sent", f"{bytes_sent / 1e6:.1f} MB "
                              f"({report['broker_bytes_per_device'] / 1e6:.1f} MB per device)"),
        ("measured device: its download / the whole wave's",
         f"{report['measured_device_download_s']} s / {report['wave_transfer_s']} s"),
        ("results/s before -> during the wave's transfer",
         f"{before['per_s']} -> {during['per_s']} (ratio {report['fps_ratio_during_transfer']},"
         f" goal >= {GOAL_FPS_RATIO})"),
        ("results latency p95 before -> during",
         f"{before['latency_p95_ms']} -> {during['latency_p95_ms']} ms"),
        ("telemetry latency p95 before -> during",
         f"{tel_before['latency_p95_ms']} -> {tel_during['latency_p95_ms']} ms "
         f"({tel_during['messages']} messages during)"),
    ]
    table = "| measure | value |\n| --- | --- |\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    (out / "rollout.md").write_text("# Fleet rollout\n\n" + __doc__.split("\n\n")[-1] + "\n\n"
                                    + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
