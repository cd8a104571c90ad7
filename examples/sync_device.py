"""A device loop with durable MQTT sync: publish per frame, report health, answer commands.

    mosquitto -p 1883 &                                  # any MQTT broker
    python examples/sync_device.py --broker mqtt://127.0.0.1:1883 --device-id cam-01
    edge-fleet devices                                   # in another shell
    edge-fleet tail cam-01 --stream detections
    edge-fleet send cam-01 set_threshold '{"score": 0.6}'

Stop the broker while it runs: the loop keeps its pace, messages wait in the outbox
(cam-01.db) and arrive, in order, when the broker is back. Kill the script with SIGKILL and
start it again: nothing it published is lost.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from sync import Command, MqttSync, Priority, SyncError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--device-id", default="cam-01")
    parser.add_argument("--frames", type=int, default=300, help="frames to simulate")
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args()

    state: dict[str, Any] = {"threshold": 0.5, "fps": 0.0, "latency_ms": []}

    def health() -> dict[str, Any]:
        # Called by sync once per telemetry interval, from its own thread.
        lat = sorted(state["latency_ms"][-100:]) or [0.0]
        return {"fps": round(state["fps"], 1), "latency_p95_ms": lat[int(0.95 * (len(lat) - 1))],
                "threshold": state["threshold"]}

    sync = MqttSync(args.broker, args.device_id, f"{args.device_id}.db",
                    model="demo-detector-int8", telemetry=health, telemetry_interval=5)

    @sync.command("set_threshold")
    def set_threshold(cmd: Command) -> dict[str, float]:
        score = float(cmd.args["score"])
        if not 0.0 < score < 1.0:
            raise ValueError("score must be between 0 and 1")
        state["threshold"] = score
        return {"threshold": score}

    sync.start()
    try:
        start = time.monotonic()
        for frame in range(args.frames):
            t0 = time.perf_counter()
            time.sleep(0.02)  # stands in for preprocess + inference + decode
            score = random.random()
            state["latency_ms"].append((time.perf_counter() - t0) * 1000)
            if score >= state["threshold"]:
                sync.publish("detections", {"frame": frame, "label": "person",
                                            "score": round(score, 3)})
            if frame % 50 == 0:
                sync.publish("events", {"frame": frame, "event": "checkpoint"},
                             priority=Priority.HIGH)
            state["fps"] = (frame + 1) / (time.monotonic() - start)
            time.sleep(max(0.0, start + (frame + 1) / args.fps - time.monotonic()))
        print(sync.state())
    finally:
        sync.close(drain_timeout=5)  # give the last messages a moment; the rest stay stored


if __name__ == "__main__":
    try:
        main()
    except SyncError as exc:  # a second copy on the same outbox, a bad broker URL, ...
        raise SystemExit(f"sync_device: {exc}") from None
