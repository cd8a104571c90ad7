"""sync: publish() latency with the broker up / down / stalled, outbox and drain throughput,
and what sync costs an inference loop. Starts its own Mosquitto on a loopback port.

    .venv/bin/python benchmarks/bench_sync.py [--quick]

Writes benchmarks/results/sync.json and sync.md. Every number is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt  # noqa: E402

from sync import MqttSync  # noqa: E402

GOALS = {
    "publish_p99_ms_max": 1.0,
    "publish_rate_min": 10_000,
    "drain_rate_min": 5_000,
    "fps_ratio_min": 0.97,
}
FAST = {"keepalive": 5, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 5.0}


def payload_200() -> dict[str, Any]:
    """A detection-like payload whose JSON is exactly 200 bytes."""
    base = {"label": "person", "score": 0.9312, "box": [112, 40, 301, 388], "track": 17,
            "pad": ""}
    size = len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * (200 - size)
    return base


# -- a broker of our own ---------------------------------------------------------------------


class Mosquitto:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join([
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1", "allow_anonymous true",
            "persistence true", f"persistence_location {self.workdir}/",
            "max_queued_messages 1000000", "max_inflight_messages 100",
            "log_dest stdout", "log_type error",
        ]) + "\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def subscriber(
    port: int, topic: str, count: int | None = None, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """A QoS 1 consumer in its own process (C client), as a cloud service would be."""
    args = ["mosquitto_sub", "-p", str(port), "-q", "1", "-t", topic, *(extra or [])]
    if count is not None:
        args += ["-C", str(count)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # let it subscribe; only affects what it sees, not what we time
    return proc


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    xs = sorted(samples_ns)

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] / 1e6, 4)

    return {"n": len(xs), "p50_ms": q(0.50), "p99_ms": q(0.99), "p999_ms": q(0.999),
            "max_ms": round(xs[-1] / 1e6, 3)}


# -- 1. publish() latency --------------------------------------------------------------------


def publish_latency(sync: MqttSync, n: int, rate: float) -> dict[str, float]:
    """Time each publish() at a steady rate, as a device loop would call it."""
    body = payload_200()
    samples: list[int] = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        sync.publish("detections", body)
        samples.append(time.perf_counter_ns() - t0)
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return percentiles(samples)


def bench_latency(tmp: Path, broker: Mosquitto, n: int, rate: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sub = subscriber(broker.port, "edge/#")
    try:
        with MqttSync(broker.url, "lat-up", tmp / "up.db", **FAST) as s:
            s.wait_connected(10)
            out["broker_up"] = publish_latency(s, n, rate)
            out["broker_up"]["delivered_during_run"] = s.state().sent
        with MqttSync("mqtt://127.0.0.1:1", "lat-down", tmp / "down.db", **FAST) as s:
            out["broker_down"] = publish_latency(s, n, rate)
        with MqttSync(broker.url, "lat-stall", tmp / "stall.db", **FAST) as s:
            s.wait_connected(10)
            broker.pause()
            try:
                out["broker_stalled"] = publish_latency(s, n, rate)
            finally:
                broker.resume()
    finally:
        sub.terminate()
        sub.wait()
    return out


# -- 2. throughput into the outbox, 3. drain after an outage ----------------------------------


def bench_publish_rate(tmp: Path, broker: Mosquitto, n: int) -> dict[str, Any]:
    body = payload_200()
    out: dict[str, Any] = {}
    for name, url in (("broker_down", "mqtt://127.0.0.1:1"), ("broker_up", broker.url)):
        sub = subscriber(broker.port, "edge/#") if name == "broker_up" else None
        with MqttSync(url, f"rate-{name}", tmp / f"rate-{name}.db", **FAST) as s:
            if name == "broker_up":
                s.wait_connected(10)
            samples: list[int] = []
            t0 = time.perf_counter()
            for _ in range(n):
                a = time.perf_counter_ns()
                s.publish("detections", body)
                samples.append(time.perf_counter_ns() - a)
            elapsed = time.perf_counter() - t0
            out[name] = {"messages": n, "seconds": round(elapsed, 3),
                         "msg_per_s": round(n / elapsed), "latency": percentiles(samples)}
        if sub:
            sub.terminate()
            sub.wait()
    return out


def bench_drain(tmp: Path, broker: Mosquitto, n: int) -> dict[str, Any]:
    """Fill the outbox while the broker is down, bring it back, time CONNACK -> empty outbox.

    The consumer is a mosquitto_sub with a persistent session made before the outage, so the
    broker queues for it even if the device reconnects first; it must receive all n.
    """
    body = payload_200()
    topic = "edge/default/drain/detections"
    sub_args = ["-c", "-i", "bench-drain-consumer"]
    first = subscriber(broker.port, topic, extra=sub_args)
    first.terminate()
    first.wait()
    broker.stop()  # SIGTERM: the consumer's session is saved
    s = MqttSync(broker.url, "drain", tmp / "drain.db", **FAST).start()
    try:
        for _ in range(n):
            s.publish("detections", body)
        broker.start()
        consumer = subscriber(broker.port, topic, count=n, extra=sub_args)
        if not s.drain(300):
            raise RuntimeError("outbox did not drain")
        done = time.time()
        connected_since = s.state().connected_since
        reconnects = s.state().reconnects
        try:
            consumer.wait(timeout=120)
            consumer_got_all = consumer.returncode == 0
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer_got_all = False
    finally:
        s.close()
    if connected_since is None:
        raise RuntimeError("lost the connection while draining")
    elapsed = done - connected_since
    return {"messages": n, "seconds": round(elapsed, 3), "msg_per_s": round(n / elapsed),
            "reconnects_during_drain": reconnects,
            "qos1_consumer_received_all": consumer_got_all,
            "note": "timed from CONNACK to the last PUBACK'ed row deleted; a mosquitto_sub "
                    "QoS 1 consumer (own process, persistent session) received them"}


# -- 4. inference loop with and without sync -------------------------------------------------


def build_model(tmp: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    # A MobileNetV2-shaped CNN (inverted residuals, width 1.0, 224x224, random weights): the
    # kind of small model an edge camera runs. A toy 0.2 ms model would mostly measure the
    # fixed cost of one publish() instead (reported below as us per frame).
    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            mid = cin * expand
            layers: list[nn.Module] = []
            if expand != 1:
                layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
            layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                       nn.BatchNorm2d(mid), nn.ReLU6(),
                       nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                               nn.ReLU6()]
    cin = 32
    for expand, cout, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                          (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                          (6, 320, 1, 1)]:
        for i in range(repeats):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += [nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    model = nn.Sequential(*layers).eval()
    path = tmp / "mobilenetv2_like.onnx"
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamo=False)
    return path


def bench_inference(tmp: Path, rounds: int, frames: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    path = build_model(tmp)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one core for inference, one left for the rest of the device
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(8)]

    def loop(publish: Callable[[dict[str, Any]], object] | None, warmup: bool = False) -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(30 if warmup else frames):
            logits = session.run(None, {"input": images[i % len(images)]})[0][0]
            top = np.argsort(logits)[::-1][:3]
            if publish is not None:
                publish({"frame": i, "top": [[int(c), round(float(logits[c]), 4)] for c in top]})
        # CPU time of the whole process (inference and every sync thread) per frame: unlike
        # wall-clock FPS it does not depend on what else runs on the machine.
        n = 30 if warmup else frames
        cpu_ms[variant_now[0]].append((time.process_time() - c0) * 1000 / n)
        return n / (time.perf_counter() - t0)

    cpu_ms: dict[str, list[float]] = {"warmup": [], "no_sync": [], "sync_broker_down": []}
    variant_now = ["warmup"]
    loop(None)  # warm-up
    fps: dict[str, list[float]] = {"no_sync": [], "sync_broker_down": []}
    for r in range(rounds):
        order = ["no_sync", "sync_broker_down"] if r % 2 == 0 else ["sync_broker_down", "no_sync"]
        for variant in order:
            variant_now[0] = variant
            if variant == "no_sync":
                fps[variant].append(loop(None))
            else:
                # Default settings (30 s backoff cap, 10 s telemetry), as a device would run;
                # one outbox reopened each round, like a device that restarts. Its start-up
                # (threads, first connect attempts) is left out: a device runs for hours.
                s = MqttSync("mqtt://127.0.0.1:1", "infer", tmp / "infer.db").start()
                try:
                    publish = lambda p, s=s: s.publish("detections", p)  # noqa: E731
                    variant_now[0] = "warmup"
                    loop(publish, warmup=True)
                    variant_now[0] = variant
                    fps[variant].append(loop(publish))
                finally:
                    s.close()
    med = {k: statistics.median(v) for k, v in fps.items()}
    # Rounds are paired (both variants back to back), so the median of per-round ratios is
    # robust to the machine getting busier or quieter during the run.
    paired = [a / b for a, b in zip(fps["sync_broker_down"], fps["no_sync"], strict=True)]
    per_frame_ms = {k: 1000.0 / v for k, v in med.items()}
    return {"model": "MobileNetV2-shaped CNN (random weights, 3.5 M params), 1x3x224x224 fp32, "
                     "onnxruntime CPU, 1 intra-op thread; MqttSync with default settings",
            "ms_per_frame_median": {k: round(v, 3) for k, v in per_frame_ms.items()},
            "sync_cost_us_per_frame": round(
                (per_frame_ms["sync_broker_down"] - per_frame_ms["no_sync"]) * 1000, 1),
            "rounds": rounds, "frames_per_round": frames,
            "fps_median": {k: round(v, 1) for k, v in med.items()},
            "fps_rounds": {k: [round(x, 1) for x in v] for k, v in fps.items()},
            "cpu_ms_per_frame_median": {k: round(statistics.median(cpu_ms[k]), 3)
                                        for k in ("no_sync", "sync_broker_down")},
            "cpu_ratio": round(statistics.median(cpu_ms["no_sync"])
                               / statistics.median(cpu_ms["sync_broker_down"]), 4),
            "ratio_of_medians": round(med["sync_broker_down"] / med["no_sync"], 4),
            "ratio": round(statistics.median(paired), 4),
            "ratio_quartiles": [round(x, 4) for x in statistics.quantiles(paired, n=4)]}


# -- report ----------------------------------------------------------------------------------


def host() -> dict[str, Any]:
    try:
        mosq = subprocess.run([shutil.which("mosquitto") or "mosquitto", "-h"],
                              capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        mosq = "unknown"
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "paho_mqtt": paho.mqtt.__version__,
            "sqlite": sqlite3.sqlite_version, "mosquitto": mosq.strip(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def markdown(r: dict[str, Any]) -> str:
    lat, rate, drain, inf = r["publish_latency"], r["publish_rate"], r["drain"], r["inference"]
    ok = r["checks"]
    lines = [
        "# sync benchmark",
        "",
        f"`{r['command']}` on {r['host']['platform']}, {r['host']['cpus']} CPUs, Python "
        f"{r['host']['python']}, paho-mqtt {r['host']['paho_mqtt']}, SQLite "
        f"{r['host']['sqlite']}, {r['host']['mosquitto']}; {r['date']}; load average at "
        f"the end {r['host']['load_average_1_5_15']} (other work shares this machine).",
        "",
        f"## publish() latency, {r['params']['latency_rate']:.0f} msg/s steady, 200-byte "
        "payload",
        "",
        "| broker | n | p50 ms | p99 ms | p99.9 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in ("broker_up", "broker_down", "broker_stalled"):
        v = lat[k]
        lines.append(f"| {k.split('_')[1]} | {v['n']} | {v['p50_ms']} | {v['p99_ms']} | "
                     f"{v['p999_ms']} | {v['max_ms']} |")
    lines += [
        "",
        "## throughput",
        "",
        "| what | messages | msg/s | p99 ms per call |",
        "| --- | ---: | ---: | ---: |",
        f"| publish() into the outbox, broker down | {rate['broker_down']['messages']} | "
        f"{rate['broker_down']['msg_per_s']} | {rate['broker_down']['latency']['p99_ms']} |",
        f"| publish() into the outbox, broker up (sender draining) | "
        f"{rate['broker_up']['messages']} | {rate['broker_up']['msg_per_s']} | "
        f"{rate['broker_up']['latency']['p99_ms']} |",
        f"| drain to local broker after outage (QoS 1, PUBACK each) | {drain['messages']} | "
        f"{drain['msg_per_s']} | - |",
        "",
        "## inference loop (one publish per frame, broker down vs no sync)",
        "",
        f"{inf['model']}; {inf['rounds']} alternating rounds of {inf['frames_per_round']} "
        "frames.",
        "",
        "| variant | median FPS | ms/frame |",
        "| --- | ---: | ---: |",
        f"| no sync | {inf['fps_median']['no_sync']} | "
        f"{inf['ms_per_frame_median']['no_sync']} |",
        f"| sync attached, broker down | {inf['fps_median']['sync_broker_down']} | "
        f"{inf['ms_per_frame_median']['sync_broker_down']} |",
        f"| ratio (median of paired rounds; quartiles {inf['ratio_quartiles'][0]}-"
        f"{inf['ratio_quartiles'][2]}) | {inf['ratio']} | |",
        f"| ratio of the medians | {inf['ratio_of_medians']} | |",
        "",
        "CPU time of the whole process per frame (inference plus all sync threads), which other "
        "load on the machine does not distort: "
        f"{inf['cpu_ms_per_frame_median']['no_sync']} ms without sync, "
        f"{inf['cpu_ms_per_frame_median']['sync_broker_down']} ms with; ratio "
        f"{inf['cpu_ratio']}.",
        "",
        f"sync costs about {inf['sync_cost_us_per_frame']} us per frame here (one durable "
        "publish); the ratio for another model is roughly frame_time / (frame_time + that).",
        "",
        "## checks",
        "",
    ]
    lines += [f"- {'PASS' if v else 'FAIL'} {k}" for k, v in ok.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    q = args.quick
    params = {"latency_n": 2000 if q else 10_000, "latency_rate": 1000.0,
              "rate_n": 20_000 if q else 100_000, "drain_n": 10_000 if q else 50_000,
              "inference_rounds": 10 if q else 60, "inference_frames": 100}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            print("publish() latency ...", flush=True)
            latency = bench_latency(tmp, broker, params["latency_n"], params["latency_rate"])
            print("publish rate ...", flush=True)
            rate = bench_publish_rate(tmp, broker, params["rate_n"])
            print("drain after outage ...", flush=True)
            drain = bench_drain(tmp, broker, params["drain_n"])
        finally:
            broker.stop()
        print("inference loop ...", flush=True)
        inference = bench_inference(tmp, params["inference_rounds"], params["inference_frames"])
    checks = {
        f"publish p99 < {GOALS['publish_p99_ms_max']} ms (broker {k.split('_')[1]})":
            latency[k]["p99_ms"] < GOALS["publish_p99_ms_max"]
        for k in ("broker_up", "broker_down", "broker_stalled")
    }
    checks[f"publish into outbox >= {GOALS['publish_rate_min']} msg/s (broker down)"] = (
        rate["broker_down"]["msg_per_s"] >= GOALS["publish_rate_min"])
    checks[f"publish into outbox >= {GOALS['publish_rate_min']} msg/s (broker up)"] = (
        rate["broker_up"]["msg_per_s"] >= GOALS["publish_rate_min"])
    checks[f"drain >= {GOALS['drain_rate_min']} msg/s"] = (
        drain["msg_per_s"] >= GOALS["drain_rate_min"] and drain["qos1_consumer_received_all"])
    checks[f"inference FPS ratio >= {GOALS['fps_ratio_min']}"] = (
        inference["ratio"] >= GOALS["fps_ratio_min"])
    result = {
        "command": "python benchmarks/bench_sync.py" + (" --quick" if q else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": host(), "params": params, "goals": GOALS,
        "publish_latency": latency, "publish_rate": rate, "drain": drain,
        "inference": inference, "checks": checks,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "sync.md").write_text(md)
    print(md)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
