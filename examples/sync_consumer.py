"""A cloud consumer that stores every device message exactly once, and scales out.

Run several copies with the same --group: the broker's shared subscription splits the
traffic between them, and the database's unique key on the message id absorbs the QoS 1
duplicates whichever copy they land on.

    python examples/sync_consumer.py --broker mqtt://127.0.0.1:1883 --group archivers --db fleet.db
"""

from __future__ import annotations

import argparse
import sqlite3

import paho.mqtt.client as mqtt

from sync import PayloadError, SyncError, decode_envelope, load_config
from sync.connection import build_client, connect_and_wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--fleet", default="default")
    parser.add_argument("--group", default="archivers", help="shared subscription group")
    parser.add_argument("--name", default="archiver-1",
                        help="stable per copy: the broker keeps this copy's session")
    parser.add_argument("--config", help="INI file with a [sync] section (TLS, credentials)")
    parser.add_argument("--db", default="fleet.db")
    args = parser.parse_args()

    db = sqlite3.connect(args.db, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, device TEXT, "
               "stream TEXT, seq INTEGER, ts REAL, payload TEXT)")
    filt = f"$share/{args.group}/edge/{args.fleet}/+/+"

    def on_connect(client: mqtt.Client, *rest: object) -> None:
        client.subscribe(filt, qos=1)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.rsplit("/", 1)[-1] in ("status", "seen", "cmd", "ack"):
            return
        try:
            env = decode_envelope(msg.payload)
        except PayloadError:
            return
        # INSERT OR IGNORE on the primary key: a duplicate is a no-op, wherever it lands.
        db.execute("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                   (env.id, env.device, env.stream, env.seq, env.ts, msg.payload.decode()))

    # Same settings and TLS/password handling as the devices and edge-fleet use. A fixed
    # client id and a persistent session: messages routed to this copy while it restarts
    # wait for it at the broker.
    cfg = load_config({"broker": args.broker, "fleet": args.fleet}, args.config)
    client = build_client(cfg, args.name, clean_session=False)
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        connect_and_wait(client, cfg)
    except SyncError as exc:
        raise SystemExit(f"sync_consumer: {exc}") from None
    print(f"storing {filt} into {args.db}; Ctrl-C to stop")
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect()
    # Completeness check per stream: seq must be contiguous (gaps = dropped at the device).
    for device, stream, lo, hi, n in db.execute(
        "SELECT device, stream, MIN(seq), MAX(seq), COUNT(*) FROM messages "
        "GROUP BY device, stream"
    ):
        print(f"{device}/{stream}: seq {lo}..{hi}, {n} stored, {hi - lo + 1 - n} missing")


if __name__ == "__main__":
    main()
