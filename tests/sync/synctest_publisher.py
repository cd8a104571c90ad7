"""A device process for the crash tests: publishes messages 0..total-1 at a steady rate.

Message k goes to stream ``s{k % streams}`` with seq ``k // streams + 1`` and a payload that
is a pure function of k, so a consumer can check every message arrived exactly as produced.
After each ``publish()`` returns it prints ``k`` (flushed): the parent then knows message k
was accepted. On start it prints ``resume K``: the first k not yet in the outbox, so a
restarted process continues where the killed one stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from sync import MqttSync


def payload(k: int, pad: int) -> dict[str, object]:
    return {"k": k, "check": hashlib.sha1(str(k).encode()).hexdigest()[:16], "pad": "x" * pad}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--outbox", required=True)
    p.add_argument("--device", default="pub")
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = as fast as possible")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--pad", type=int, default=100)
    p.add_argument("--drain", type=float, default=0.0, help="wait this long for delivery")
    args = p.parse_args()
    names = [f"s{i}" for i in range(args.streams)]
    sync = MqttSync(
        args.broker, args.device, args.outbox,
        keepalive=2, backoff_initial=0.05, backoff_cap=0.5, telemetry_interval=3600,
    ).start()
    k = sum(sync.next_seq(name) - 1 for name in names)
    print(f"resume {k}", flush=True)
    start = time.monotonic()
    first = k
    while k < args.total:
        receipt = sync.publish(names[k % args.streams], payload(k, args.pad))
        if receipt.seq != k // args.streams + 1:
            print(f"error: message {k} got seq {receipt.seq}", flush=True)
            return 3
        print(k, flush=True)
        k += 1
        if args.rate > 0:
            delay = start + (k - first) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print("published", flush=True)
    drained = sync.drain(args.drain) if args.drain > 0 else False
    sync.close()
    print("drained" if drained else "not drained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
