"""``edge-fleet``: the cloud-side view of a fleet of devices running ``MqttSync``.

    edge-fleet devices                      who is online, last seen, which model
    edge-fleet tail all --stream detections  follow data, deduplicated, gaps reported
    edge-fleet send cam-01 ping              run a command on a device and wait for its ack
    edge-fleet serve                         fleet console: database, alerts, dashboard
    edge-fleet deploy BUNDLE --group lobby   roll a signed model out (sync/rollout_cli.py)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from sync import rollout_cli, topics
from sync.argtypes import positive_int, seconds
from sync.commands import make_request, parse_ack
from sync.config import SyncConfig, load_config
from sync.connection import build_client, connect_and_wait
from sync.console import serve
from sync.envelope import decode_envelope, valid_ts
from sync.errors import PayloadError, SyncError
from sync.tracking import StreamTracker

EXIT_OK, EXIT_ERROR_ACK, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3

EPILOG = """\
settings (flags > config file > environment > defaults):
  --config FILE or $EDGE_SYNC_CONFIG: an INI file with a [sync] section, e.g.
      [sync]
      broker = mqtts://broker.example.com:8883
      fleet = shop-floor
      username = ops
      password = s3cret
      # paths are relative to this file
      ca_file = certs/ca.crt
  environment: EDGE_SYNC_BROKER, EDGE_SYNC_FLEET, EDGE_SYNC_USERNAME, EDGE_SYNC_PASSWORD,
      EDGE_SYNC_CA_FILE, EDGE_SYNC_CERT_FILE, EDGE_SYNC_KEY_FILE, ...
  Prefer the file or the environment for passwords: flags show up in `ps`.

examples:
  edge-fleet devices
  edge-fleet --broker mqtt://10.0.0.5:1883 --fleet shop devices --json
  edge-fleet tail all                        # every data stream of every device
  edge-fleet tail cam-01 --stream detections --count 10
  edge-fleet tail all --share workers        # one of N consumers sharing the load
  edge-fleet tail all --session archiver     # persistent: the broker queues while away
  edge-fleet send cam-01 ping
  edge-fleet send cam-01 set_threshold '{"score": 0.4}' --timeout 5

exit codes: 0 ok, 1 the device answered with an error, 2 usage/config/connection error,
3 no answer (device offline or timeout).
"""


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Connection flags, accepted before or after the subcommand."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g = parser.add_argument_group("connection")
    g.add_argument("--config", metavar="FILE", help="INI file with a [sync] section", **kw)
    g.add_argument("--broker", metavar="URL", help="mqtt://host:1883 or mqtts://host:8883", **kw)
    g.add_argument(
        "--fleet", metavar="NAME", help="topic level edge/{fleet}/... (default: default)", **kw
    )
    g.add_argument("--username", metavar="USER", **kw)
    g.add_argument("--password", metavar="PASS", help="prefer the config file or environment", **kw)
    g.add_argument("--ca-file", metavar="PEM", help="CA that signed the broker's certificate", **kw)
    g.add_argument("--cert-file", metavar="PEM", help="client certificate (mutual TLS)", **kw)
    g.add_argument("--key-file", metavar="PEM", help="key of the client certificate", **kw)
    g.add_argument(
        "--connect-timeout", metavar="S", type=seconds, help="seconds to wait for the broker",
        **kw
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-fleet",
        usage="edge-fleet [connection options] COMMAND ...",
        description="See and steer a fleet of edge devices through their MQTT broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, suppress=False)
    # prog: the subcommands' errors say "edge-fleet devices: error:", not the short usage
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                prog="edge-fleet")

    p = sub.add_parser(
        "devices",
        usage="edge-fleet devices [--wait S] [--json] [connection options]",
        help="list devices from their retained status: online/offline, last seen, model",
        description="List every device that ever announced itself in the fleet.",
    )
    p.add_argument("--wait", type=seconds, default=1.0, metavar="S",
                   help="how long to collect retained status messages (default 1 s)")
    p.add_argument("--json", action="store_true", help="one JSON object per device")
    _connection_options(p, suppress=True)

    p = sub.add_parser(
        "tail",
        usage="edge-fleet tail DEVICE|all [--stream NAME] [--count N] [options]",
        help="print data messages as they arrive, deduplicated by id, gaps reported",
        description=(
            "Follow data streams. Duplicates (same message id, normal with QoS 1) are "
            "dropped; missing sequence numbers are reported on stderr."
        ),
    )
    p.add_argument("target", metavar="DEVICE|all", help="a device id, or 'all'")
    p.add_argument("--stream", metavar="NAME", help="only this stream (default: all streams)")
    p.add_argument("--share", metavar="GROUP",
                   help="shared subscription $share/GROUP/...: the broker splits messages "
                        "between all consumers of GROUP (gap reports are then off)")
    p.add_argument("--session", metavar="NAME",
                   help="persistent session with this client id: the broker keeps QoS 1 "
                        "messages for us while we are away")
    p.add_argument("--count", type=positive_int, metavar="N",
                   help="stop after N unique messages")
    p.add_argument("--duration", type=seconds, metavar="S", help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="print each envelope as JSON")
    _connection_options(p, suppress=True)

    p = sub.add_parser(
        "send",
        usage="edge-fleet send DEVICE COMMAND [JSON] [--timeout S] [connection options]",
        help="send a command to a device and wait for its acknowledgement",
        description="Run a registered command on a device; prints the result as JSON.",
    )
    p.add_argument("device", help="device id")
    p.add_argument("name", metavar="COMMAND", help="command name, e.g. ping, stats")
    p.add_argument("args", nargs="?", metavar="JSON", help="arguments as a JSON object")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="S",
                   help="how long to wait for the ack (default 10 s)")
    _connection_options(p, suppress=True)
    serve.add_parser(sub, _connection_options)
    rollout_cli.add_parsers(sub, _connection_options)
    return parser


def _config(args: argparse.Namespace) -> SyncConfig:
    flags = {
        name: getattr(args, name, None)
        for name in ("broker", "fleet", "username", "password", "ca_file", "cert_file", "key_file")
    }
    return load_config(flags, getattr(args, "config", None))


def _connect(
    args: argparse.Namespace,
    cfg: SyncConfig,
    on_connect: Any = None,
    on_message: Any = None,
    session: str | None = None,
    on_subscribe: Any = None,
) -> mqtt.Client:
    client_id = session or f"edge-fleet-{uuid.uuid4().hex[:12]}"
    client = build_client(cfg, client_id, clean_session=session is None)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.reconnect_delay_set(1, 30)
    timeout = getattr(args, "connect_timeout", None) or 10.0
    connect_and_wait(client, cfg, timeout=timeout)
    client.loop_start()
    return client


def _subscribe_and_wait(client: mqtt.Client, filters: list[str], timeout: float = 10.0) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe([(f, 1) for f in filters])
    if not done.wait(timeout):
        raise SyncError("the broker did not confirm the subscription")


# -- devices ---------------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _config(args)
    found: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    skipped = 0

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal skipped
        parts = topics.parse_topic(msg.topic)
        if parts is None or not msg.payload:  # an empty retained message clears a device
            return
        fields = _presence_fields(parts.leaf, msg.payload)
        with lock:
            if fields is None:
                skipped += 1
                return
            entry = found.setdefault(parts.device, {"device": parts.device})
            entry.update(fields)

    client = _connect(args, cfg, on_message=on_message)
    try:
        _subscribe_and_wait(
            client,
            [topics.filter_for(cfg.fleet, None, topics.STATUS),
             topics.filter_for(cfg.fleet, None, topics.SEEN)],
        )
        time.sleep(args.wait)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        rows = [found[d] for d in sorted(found)]
        if skipped:
            err.write(f"edge-fleet: skipped {skipped} malformed status messages\n")
    for row in rows:
        stamps = [t for t in (row.pop("status_ts", None), row.pop("seen_ts", None)) if t]
        row["last_seen"] = max(stamps) if stamps else None
        row.setdefault("state", "unknown")
    if args.json:
        for row in rows:
            out.write(json.dumps(row) + "\n")
        return EXIT_OK
    if not rows:
        out.write(f"no devices have announced themselves in fleet {cfg.fleet!r} "
                  f"on {cfg.broker}\n")
        return EXIT_OK
    now = time.time()
    table = [("DEVICE", "STATE", "LAST SEEN", "MODEL", "VERSION", "UPTIME")]
    for r in rows:
        table.append((
            r["device"], str(r.get("state")), _ago(r["last_seen"], now),
            str(r.get("model") or "-"), str(r.get("version") or "-"),
            _duration(r.get("uptime_s")) if r.get("state") == "online" else "-",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
    return EXIT_OK


def _presence_fields(leaf: str, payload: bytes) -> dict[str, Any] | None:
    """The fields of a retained status/seen message, or None if anything has the wrong type."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    ts = body.get("ts")
    if (ts is not None or leaf == topics.SEEN) and not valid_ts(ts):
        return None
    if leaf == topics.SEEN:
        return {"seen_ts": ts}
    texts = {k: body.get(k) for k in ("state", "model", "version")}
    if any(v is not None and not isinstance(v, str) for v in texts.values()):
        return None
    uptime = body.get("uptime_s")
    if uptime is not None and not (valid_ts(uptime) and uptime < 1e10):
        return None
    return {**texts, "uptime_s": uptime, "status_ts": ts}


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    stamp = datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({_duration(max(0.0, now - ts))} ago)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# -- tail ------------------------------------------------------------------------------------


def _check_name(what: str, value: str, hint: str = "") -> None:
    """A device or group is one topic level: '+', '#' or '/' would make paho raise (a
    traceback) or subscribe to other devices' topics."""
    if not topics.is_name(value):
        raise SyncError(f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-'{hint}")


def cmd_tail(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.target != "all":
        _check_name("DEVICE", args.target, " (or 'all' for every device)")
    if args.share is not None:
        _check_name("--share", args.share)
    cfg = _config(args)
    device = None if args.target == "all" else args.target
    if args.stream is not None and args.stream != topics.TELEMETRY:
        topics.check_stream(args.stream)
    tracker = StreamTracker(report_gaps=not args.share)
    unique = 0
    skipped = 0
    done = threading.Event()
    lock = threading.Lock()
    filt = topics.filter_for(cfg.fleet, device, args.stream, share=args.share)

    def on_connect(c: mqtt.Client, *rest: Any) -> None:
        c.subscribe(filt, qos=1)  # again after every reconnect (clean sessions forget it)

    def on_subscribe(c: mqtt.Client, *rest: Any) -> None:
        err.write(f"listening on {filt}\n")
        err.flush()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal skipped
        try:
            show(msg)
        except Exception as exc:  # paho's thread would end silently: skip the message instead
            with lock:
                skipped += 1
                err.write(f"skipping a malformed message on {msg.topic}: {exc}\n")

    def show(msg: mqtt.MQTTMessage) -> None:
        nonlocal unique
        parts = topics.parse_topic(msg.topic)
        if parts is None or (parts.leaf in topics.RESERVED and parts.leaf != topics.TELEMETRY):
            return
        env = decode_envelope(msg.payload)
        with lock:
            if done.is_set():
                return
            seen = tracker.observe(env)
            if seen.duplicate:
                return
            if seen.gap is not None:
                err.write(f"{seen.gap}\n")
            elif seen.reset:
                err.write(f"note: {env.device}/{env.stream} restarted at seq {env.seq}\n")
            if args.json:
                out.write(msg.payload.decode("utf-8", "replace") + "\n")
            else:
                stamp = datetime.fromtimestamp(env.ts, tz=timezone.utc).strftime(
                    "%H:%M:%S.%f"
                )[:-3]
                payload = json.dumps(env.payload, separators=(",", ":"))
                out.write(f"{stamp} {env.device}/{env.stream} #{env.seq} {payload}\n")
            out.flush()
            unique += 1
            if args.count is not None and unique >= args.count:
                done.set()

    client = _connect(args, cfg, on_connect=on_connect, on_message=on_message,
                      session=args.session, on_subscribe=on_subscribe)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: print the summary
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        with lock:
            err.write(f"{tracker.summary()}, skipped {skipped} malformed\n")
    return EXIT_OK


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- send ------------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _check_name("DEVICE", args.device)
    cfg = _config(args)
    try:
        cmd_args = json.loads(args.args) if args.args else None
    except ValueError as exc:
        raise PayloadError(f"arguments must be a JSON object: {exc}") from None
    cmd_id, request = make_request(args.name, cmd_args)
    status: dict[str, Any] = {}
    ack: dict[str, Any] = {}
    got_ack = threading.Event()
    ack_topic = topics.topic(cfg.fleet, args.device, topics.ACK)
    status_topic = topics.topic(cfg.fleet, args.device, topics.STATUS)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == status_topic and msg.payload:
                body = json.loads(msg.payload)
                if isinstance(body, dict):
                    status.update(body)
            elif msg.topic == ack_topic:
                answer = parse_ack(msg.payload)
                if answer.id == cmd_id:
                    ack["ack"] = answer
                    got_ack.set()
        except Exception:  # a malformed status or ack is not ours to answer; keep listening
            return

    client = _connect(args, cfg, on_message=on_message)
    try:
        _subscribe_and_wait(client, [ack_topic, status_topic])
        time.sleep(0.2)  # let the retained status arrive
        if status.get("state") == "offline":
            err.write(f"edge-fleet: {args.device} is offline; command not sent "
                      "(see `edge-fleet devices`)\n")
            return EXIT_NO_ANSWER
        info = client.publish(topics.topic(cfg.fleet, args.device, topics.COMMAND), request, qos=1)
        try:
            info.wait_for_publish(timeout=args.timeout)
        except (RuntimeError, ValueError) as exc:  # the link dropped before the broker had it
            raise SyncError(f"could not send the command: {exc}") from None
        if not got_ack.wait(args.timeout):
            known = "" if status else " (it never announced itself: check the device id)"
            err.write(f"edge-fleet: no answer from {args.device} within {args.timeout:g} s"
                      f"{known}\n")
            return EXIT_NO_ANSWER
    finally:
        client.disconnect()
        client.loop_stop()
    answer = ack["ack"]
    if not answer.ok:
        err.write(f"edge-fleet: {args.device} answered with an error: {answer.error}\n")
        return EXIT_ERROR_ACK
    out.write(json.dumps(answer.result) + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "devices":
            return cmd_devices(args, sys.stdout, sys.stderr)
        if args.command == "tail":
            return cmd_tail(args, sys.stdout, sys.stderr)
        if args.command == "serve":
            return serve.cmd_serve(args, _config(args), sys.stderr)
        if args.command in rollout_cli.COMMANDS:
            return rollout_cli.run(args, _config, _connect, sys.stdout, sys.stderr)
        return cmd_send(args, sys.stdout, sys.stderr)
    except SyncError as exc:
        sys.stderr.write(f"edge-fleet: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command == "rollouts" and args.action == "cancel":  # recorded once published
            sys.stderr.write(f"edge-fleet: interrupted; the rollout may not be cancelled: run "
                             f"`edge-fleet rollouts cancel {args.rollout_id} --state "
                             f"{args.state}` again\n")
        elif args.command in ("deploy", "rollouts"):  # its rollouts are in the state file
            sys.stderr.write(f"edge-fleet: interrupted; `edge-fleet rollouts --state "
                             f"{args.state}` shows and continues the rollouts\n")
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
