"""``edge-fleet deploy``, ``edge-fleet rollouts`` and ``edge-fleet pack``: model rollouts.

    edge-fleet deploy BUNDLE --device cam-01 --device cam-02 --canary 1 --wave 5 --wait
    edge-fleet deploy BUNDLE --group lobby-cams --max-failures 1
    edge-fleet deploy BUNDLE --group lobby-cams --url https://files.example.com/m.tar
    edge-fleet rollouts                   each rollout and each device's state (advances them)
    edge-fleet rollouts cancel ID         stop a rollout (no further wave; deployments not
                                          yet taken, a finished rollout's too, taken back)
    edge-fleet pack BUNDLE m.tar          the archive to put behind --url
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from sync import rollout as ro
from sync import topics, transfer
from sync.argtypes import seconds
from sync.connection import publish_acked
from sync.errors import SyncError

COMMANDS = ("deploy", "rollouts", "pack")
DEFAULT_STATE = os.environ.get("EDGE_FLEET_STATE", ".edge-fleet/rollouts.json")


def add_parsers(sub: Any, connection_options: Any) -> None:
    p = sub.add_parser("deploy", usage="edge-fleet deploy BUNDLE (--device ID ... | --group G) "
                                       "[options]",
                       help="roll a signed bundle out to devices or a group",
                       description="Publish a rollout: canary devices first, then waves; it "
                                   "halts when more than --max-failures devices fail.")
    p.add_argument("bundle", type=Path, help="a bundle signed with `edge-opt sign`")
    p.add_argument("--device", action="append", default=[], metavar="ID",
                   help="a target device (repeatable)")
    p.add_argument("--group", metavar="G", help="every device configured with --group G, "
                   "including devices that come online later")
    p.add_argument("--canary", type=int, default=1, metavar="N",
                   help="devices in the first stage (default 1)")
    p.add_argument("--wave", type=int, default=10, metavar="SIZE",
                   help="devices per following wave (default 10)")
    p.add_argument("--max-failures", type=int, default=0, metavar="K",
                   help="halt when more than K devices fail (default 0)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let devices install a lower version than they run")
    p.add_argument("--url", metavar="URL", help="devices download `edge-fleet pack`'s archive "
                   "from this http(s) URL instead of over MQTT")
    p.add_argument("--gate-frames", type=int, default=30, metavar="N",
                   help="frames the health gate watches (default 30)")
    p.add_argument("--min-speed-ratio", type=float, default=0.8, metavar="R",
                   help="the gate fails a model slower than R x the previous one (default "
                        "0.8; 0 turns the speed check off)")
    p.add_argument("--gate-timeout", type=float, default=300.0, metavar="S",
                   help="roll back if the gate has not seen its frames within S seconds "
                        "(a stalled camera, a hung model; default 300)")
    p.add_argument("--wait", action="store_true",
                   help="stay until every device has finished or the rollout halted (serves "
                        "chunk re-requests meanwhile); offline devices never hold back a wave")
    p.add_argument("--timeout", type=seconds, default=3600.0, metavar="S",
                   help="with --wait: give up after S seconds (default 3600)")
    p.add_argument("--state", type=Path, default=Path(DEFAULT_STATE), metavar="FILE",
                   help=f"rollout state file (default {DEFAULT_STATE}, or $EDGE_FLEET_STATE)")
    connection_options(p, suppress=True)

    p = sub.add_parser("rollouts", usage="edge-fleet rollouts [cancel ROLLOUT_ID] [--wait S] "
                                         "[--json] [--state FILE] [connection options]",
                       help="show rollouts and each device's state; cancel one",
                       description="Show every rollout and its devices; running rollouts are "
                                   "advanced (next wave, halt) from the devices' reports. "
                                   "`cancel ROLLOUT_ID` stops a rollout: no further wave, "
                                   "devices not yet told never are, deployments not yet "
                                   "started are taken back (a finished rollout's too: offline "
                                   "devices, a group's later members); devices that installed "
                                   "it keep it.")
    p.add_argument("action", nargs="?", choices=("cancel",), help=argparse.SUPPRESS)
    p.add_argument("rollout_id", nargs="?", metavar="ROLLOUT_ID", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="the rollouts as JSON")
    p.add_argument("--wait", type=seconds, default=1.0, metavar="S",
                   help="how long to collect device reports (default 1 s)")
    p.add_argument("--state", type=Path, default=Path(DEFAULT_STATE), metavar="FILE")
    connection_options(p, suppress=True)

    p = sub.add_parser("pack", help="write a bundle's archive (what deploy --url serves)",
                       description="Write the archive a deployment carries (a flat tar of the "
                                   "bundle's top-level files) for a web server to serve with "
                                   "`edge-fleet deploy BUNDLE --url URL`; prints its size and "
                                   "sha256.")
    p.add_argument("bundle", type=Path, help="the bundle folder (signed with `edge-opt sign`)")
    p.add_argument("out", type=Path, help="the archive file to write (outside the bundle "
                   "folder; an existing file is replaced once the new archive is complete)")


def run(args: argparse.Namespace, cfg_of: Any, connect: Any, out: TextIO, err: TextIO) -> int:
    if args.command == "pack":
        check_bundle(args.bundle)
        transfer.pack_bundle(args.bundle, args.out)
        plan = transfer.plan_blob(args.out)
        out.write(f"{args.out}: {plan.size} bytes, sha256 {plan.sha256}\n")
        return 0
    cfg = cfg_of(args)
    rollouts = ro.RolloutStore(args.state).load()  # a damaged file is said before connecting
    if args.command == "rollouts" and (args.action or args.rollout_id):
        _check_cancel(args, rollouts)
    identity = None
    if args.command == "deploy":  # every mistake is said before anything is published
        identity = _check_deploy(args)
        ro.RolloutStore(args.state).check_writable()  # else the canary gets an unrecorded rollout
    watcher = Watcher(cfg.fleet)
    client = connect(args, cfg, on_message=watcher.on_message)
    try:
        done = threading.Event()
        filters = [(topics.filter_for(cfg.fleet, None, leaf), 1)
                   for leaf in ("deployment", "status", transfer.NEED)]
        client.on_subscribe = lambda *a: done.set()
        # a clean session's subscriptions die with the connection: after a broker restart,
        # `deploy --wait` would otherwise wait blind until its --timeout
        client.on_connect = lambda c, *a: c.subscribe(filters)
        client.subscribe(filters)
        if not done.wait(10):
            raise SyncError("the broker did not confirm the subscription")
        if args.command == "deploy":
            return _deploy(args, identity, cfg.fleet, client, watcher, out, err)
        if args.action == "cancel":
            return _cancel(args, cfg.fleet, client, watcher, out)
        return _rollouts(args, cfg.fleet, client, watcher, out, err)
    finally:
        client.disconnect()
        client.loop_stop()


MAX_NEEDS = 1000  # chunk re-requests kept between two looks (more are dropped and counted)


class Watcher:
    """Latest report and presence per device, from retained and live messages (untrusted:
    a malformed one is counted in `skipped` and ignored; nothing ends paho's thread)."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.lock = threading.Lock()
        self.reports: dict[str, dict] = {}
        self.online: dict[str, bool] = {}
        self.needs: list[tuple[str, list[int]]] = []
        self.skipped = 0

    def on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg)
        except Exception:  # a bug on one message must not stop us hearing the fleet
            with self.lock:
                self.skipped += 1

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        parts = topics.parse_topic(msg.topic)
        if parts is None or not msg.payload:
            return
        with self.lock:
            if parts.leaf == "deployment":
                report = ro.parse_report(msg.payload)
                if report is None:
                    self.skipped += 1
                else:
                    self.reports[parts.device] = report
            elif parts.leaf == topics.STATUS:
                try:
                    state = json.loads(msg.payload).get("state")
                except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
                    self.skipped += 1
                    return
                self.online[parts.device] = state == "online"
            elif parts.leaf == transfer.NEED:
                need = transfer.parse_need(msg.payload)
                if need is None or len(self.needs) >= MAX_NEEDS:
                    self.skipped += 1
                else:
                    self.needs.append(need)

    def snapshot(self) -> tuple[dict, dict, list]:
        with self.lock:
            needs, self.needs = self.needs, []
            return dict(self.reports), dict(self.online), needs


def _publisher(client: mqtt.Client, then: str = "run `edge-fleet rollouts` once it is back "
                                                 "to continue the rollout") -> ro.Publish:
    def publish(topic: str, payload: bytes, retain: bool) -> None:
        """Publish once the broker has it; a broker that stays away is one line, and the state
        file, saved only after, makes the next run publish it again."""
        what = f"the deployment on {topic}" if payload else f"taking back {topic}"
        publish_acked(client, topic, payload, retain=retain, what=what, then=then)

    return publish


def _check_deploy(args) -> tuple[str, int]:
    """Every mistake in a deploy command, said before anything is published."""
    identity = _signed_identity(args.bundle)
    check_bundle(args.bundle)
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        raise SyncError(f"--url {args.url!r} must be http:// or https://")
    if not 1 <= args.gate_frames <= 100000:
        raise SyncError("--gate-frames must be from 1 to 100000")
    if not 0 <= args.min_speed_ratio <= 1:
        raise SyncError("--min-speed-ratio must be between 0 and 1")
    if not 0 < args.gate_timeout <= 86400:
        raise SyncError("--gate-timeout must be between 0 and 86400 seconds")
    if not args.device and args.group is None:
        raise SyncError("name the devices (--device ID ...) or a group (--group G)")
    if args.canary < 0 or args.wave < 1 or args.max_failures < 0:
        raise SyncError("--canary must be >= 0, --wave >= 1 and --max-failures >= 0")
    for flag, name in [("--device", d) for d in args.device] + [("--group", args.group)]:
        if name is not None and not topics.is_name(name):
            raise SyncError(f"{flag} {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return identity


def _deploy(args, identity, fleet, client, watcher, out, err) -> int:
    with tempfile.TemporaryDirectory(prefix="edge-fleet-") as tmp:
        archive = transfer.pack_bundle(args.bundle, Path(tmp) / "bundle.tar")
        plan = transfer.plan_blob(archive)
        if plan.size > transfer.MAX_BLOB_BYTES:
            raise SyncError(f"the bundle archive is {plan.size >> 20} MB; devices accept at "
                            f"most {transfer.MAX_BLOB_BYTES >> 20} MB")
        if args.url is None:
            out.write(f"publishing {plan.size} bytes in {len(plan.chunks)} chunks\n")
            transfer.publish_blob(client, fleet, archive, plan)
        time.sleep(0.5)  # collect retained reports (group members)
        rollout = ro.new_rollout(
            name=identity[0], version=identity[1], blob=plan.to_dict(), url=args.url,
            devices=args.device, group=args.group, canary=args.canary, wave=args.wave,
            max_failures=args.max_failures, allow_downgrade=args.allow_downgrade,
            gate={"frames": args.gate_frames, "min_speed_ratio": args.min_speed_ratio,
                  "timeout": args.gate_timeout},
            bundle=str(args.bundle))
        store = ro.RolloutStore(args.state)
        publish = _publisher(client)
        reports, online, _ = watcher.snapshot()
        ro.assign_group(rollout, reports)  # its devices, for the older rollouts to hand over
        with store.locked() as rollouts:
            # recorded (saved when the block ends) before the canary goes out: a Ctrl-C or a
            # lost broker while it is published leaves a rollout that `edge-fleet rollouts`
            # shows and continues, not a deployment on the devices that no state file knows
            rollouts.append(rollout)
            for older in rollouts[:-1]:
                was = older.get("status")
                taken = ro.supersede(older, rollout)
                if taken or older.get("status") != was:
                    out.write(f"rollout {older['id']} ({older['name']} v{older['version']}) "
                              f"hands over {len(taken)} device(s) to this one"
                              + (" and stops" if older["status"] != was else "") + "\n")
            recorded = json.loads(json.dumps(rollout))  # as the file will give it back
        rollout = _apply(store, recorded, publish, fleet,
                         _reconciler(reports, online, fleet))[0]
        out.write(f"rollout {rollout['id']}: {identity[0]} version {identity[1]}, "
                  f"{len(rollout['devices'])} device(s)"
                  + (f" + group {args.group}" if args.group else "") + "\n")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        said = _tally(rollout)
        err.write(f"edge-fleet: {said}\n")
        while (rollout["status"] == "running" or (
                ro.pending(rollout) and rollout["status"] != ro.CANCELLED)) and \
                time.monotonic() < deadline:
            time.sleep(0.3)
            reports, online, needs = watcher.snapshot()
            for blob, chunks in needs:
                valid = [i for i in chunks if 0 <= i < len(plan.chunks)]
                if blob == plan.sha256 and valid and args.url is None:
                    transfer.publish_blob(client, fleet, archive, plan, valid)
            # the file's copy: another edge-fleet run may have advanced or halted it
            rollout = _apply(store, rollout, publish, fleet,
                             _reconciler(reports, online, fleet))[0]
            if _tally(rollout) != said:  # a line per change: a log shows the rollout move
                said = _tally(rollout)
                err.write(f"edge-fleet: {said}\n")
                err.flush()
        _show([rollout], out)
    if watcher.skipped:
        err.write(f"edge-fleet: skipped {watcher.skipped} malformed device messages\n")
    if rollout["status"] == ro.CANCELLED:
        err.write(f"edge-fleet: rollout cancelled: {rollout['reason']}\n")
        return 1
    if rollout["status"] == "done" and not ro.pending(rollout):
        return 0
    if rollout["status"] in ("halted", ro.SUPERSEDED):
        err.write(f"edge-fleet: rollout {rollout['status']}: {rollout['reason']}\n")
        return 1
    if rollout["status"] == "done":
        waiting = ", ".join(ro.pending(rollout))
        err.write(f"edge-fleet: every wave was released, but {waiting} had not finished after "
                  f"{args.timeout:.0f} s (offline devices take it when they come back); follow "
                  "with `edge-fleet rollouts`\n")
        return 3
    err.write(f"edge-fleet: rollout still running after {args.timeout:.0f} s; follow it with "
              "`edge-fleet rollouts`\n")
    return 3


def _rollouts(args, fleet, client, watcher, out, err) -> int:
    time.sleep(args.wait)
    reports, online, _ = watcher.snapshot()
    publish = _publisher(client)
    store = ro.RolloutStore(args.state)
    for r in store.load():  # a finished rollout's offline devices still take it later
        if r.get("status") == "running" or ro.pending(r):
            _apply(store, r, publish, fleet, _reconciler(reports, online, fleet), missing=None)
    rollouts = store.load()
    if args.json:
        for r in rollouts:
            out.write(json.dumps(r) + "\n")
    elif not rollouts:
        out.write(f"no rollouts in {_where(args.state)}\n")
    else:
        _show(rollouts, out)
    if watcher.skipped:
        err.write(f"edge-fleet: skipped {watcher.skipped} malformed device messages\n")
    return 0


def _reconciler(reports: dict, online: dict, fleet: str) -> Any:
    """`_apply`'s decision for the next wave or a halt, from these observations."""
    return lambda rollout, publish, rollouts: ro.reconcile(rollout, reports, online, publish,
                                                           fleet)


ATTEMPTS = 5  # decisions made again because another run changed the rollout meanwhile


def _apply(store: ro.RolloutStore, rollout: dict, publish: ro.Publish, fleet: str,
           decide: Any, missing: str | None = "append") -> tuple[dict, Any]:
    """Run `decide(rollout, publish, rollouts)` on the file's copy of `rollout` and record it.
    Its messages are published outside the lock (up to a minute with the broker away), so
    other edge-fleet runs sharing the file are not held up meanwhile, and recorded only once
    the broker has them (a broker that stays away leaves the file as it was: the next run
    decides again). Should another run change the rollout meanwhile, its copy stands: the
    decision is made again on it, and each topic published to gets what the file then says it
    should hold (our late message may have landed over the other run's). Returns the
    rollout as recorded and what `decide` returned. A rollout gone from the file (moved
    aside) is appended again, or with `missing=None` left alone."""
    touched: list[str] = []  # topics published to by a decision that was not recorded
    for _ in range(ATTEMPTS):
        with store.locked() as rollouts:
            current = _find(rollouts, rollout)
            if current is None:
                if missing is None:
                    return rollout, None
                rollouts.append(current := json.loads(json.dumps(rollout)))
            before = json.loads(json.dumps(current))
            sent: list[tuple[str, bytes, bool]] = []
            result = decide(current, lambda *message, sent=sent: sent.append(message),
                            rollouts)
            sent += [(t, ro.retained_for(rollouts, fleet, t), True)
                     for t in dict.fromkeys(touched) if t not in {m[0] for m in sent}]
            if not sent:
                return current, result  # saved as the block ends
            decided = json.loads(json.dumps(current))
            current.clear()
            current.update(before)  # recorded below, once published
        for message in sent:
            publish(*message)
        touched += [m[0] for m in sent]
        with store.locked() as rollouts:
            current = _find(rollouts, rollout)
            if current == before or (current is None and missing is not None):
                if current is None:
                    rollouts.append(current := {})
                current.clear()
                current.update(decided)
                return current, result
    raise SyncError(f"rollout {rollout['id']} kept being changed by another edge-fleet run "
                    f"sharing the state file; run the command again")


def _check_cancel(args, rollouts: list[dict]) -> None:
    """`rollouts cancel ROLLOUT_ID` names a rollout in --state that still has something to
    cancel (before connecting)."""
    if args.action != "cancel" or not args.rollout_id:
        raise SyncError("usage: edge-fleet rollouts cancel ROLLOUT_ID (`edge-fleet rollouts` "
                        "lists them)")
    found = _find(rollouts, {"id": args.rollout_id})
    if found is None:
        ids = [r["id"] for r in rollouts]
        like = [i for i in ids if i.startswith(args.rollout_id)] or difflib.get_close_matches(
            args.rollout_id, ids, n=3)
        hint = f"did you mean {' or '.join(like)}? " if like else ""
        raise SyncError(f"no rollout {args.rollout_id!r} in {_where(args.state)}; {hint}"
                        f"`edge-fleet rollouts --state {args.state}` lists them")
    if found.get("status") not in ro.CANCELLABLE:
        raise SyncError(f"rollout {args.rollout_id} is already {found.get('status')}: there "
                        "is nothing left to cancel")


def _cancel(args, fleet, client, watcher, out) -> int:
    reason = "cancelled with `edge-fleet rollouts cancel`"
    time.sleep(args.wait)  # the devices' reports: which ones already run it
    reports, online, _ = watcher.snapshot()
    store = ro.RolloutStore(args.state)
    was: dict[str, Any] = {}

    def decide(rollout: dict, publish: ro.Publish, rollouts: list[dict]) -> list[str] | None:
        """None when there is nothing (left) to cancel: the rollout is left as it is."""
        was["status"] = rollout.get("status")
        ro.observe(rollout, reports, online)  # a device may have finished meanwhile
        if not ro.cancellable(rollout):
            return None
        return ro.cancel(rollout, reports, online, publish, fleet, reason, rollouts)

    publish = _publisher(client, then=f"the rollout is not cancelled: run `edge-fleet rollouts "
                                      f"cancel {args.rollout_id}` again once the broker is back")
    rollout, kept = _apply(store, {"id": args.rollout_id}, publish, fleet, decide, missing=None)
    if "status" not in rollout:  # moved aside since the check
        raise SyncError(f"no rollout {args.rollout_id!r} in {args.state}")
    version = f"v{rollout['version']}"
    if kept is None and rollout.get("status") not in ro.CANCELLABLE:  # by another run
        raise SyncError(f"rollout {rollout['id']} is already {rollout['status']}: there is "
                        "nothing left to cancel")
    if kept is None:
        healthy = [d for d, e in sorted(rollout["devices"].items()) if e["state"] in ro.FINAL_OK]
        raise SyncError(f"rollout {rollout['id']} is {rollout['status']} and no deployment of it "
                        f"is left to take back ({len(healthy)} device(s) run {version}"
                        + (f": {', '.join(healthy)}" if healthy else "") + "); to go back, "
                        "deploy the previous bundle with --allow-downgrade")
    states = [e["state"] for e in rollout["devices"].values()]
    finishing = ro.pending(rollout)
    finished = "" if was["status"] == "running" else f" (it was {was['status']})"
    out.write(f"rollout {rollout['id']} ({rollout['name']} {version}) cancelled{finished}: "
              f"{states.count(ro.CANCELLED)} device(s) will not get it\n")
    if finishing:
        out.write(f"  still finishing (their deployment was taken back; one already on trial "
                  f"ends its health gate): {', '.join(finishing)}\n")
    if was["status"] == "done" and rollout.get("group"):
        holder = ro.group_holder(store.load(), rollout["group"])
        out.write(f"  devices that join group {rollout['group']} later "
                  + ("no longer get it\n" if holder is None else
                     f"get {holder['name']} v{holder['version']} (rollout {holder['id']})\n"))
    if kept:
        out.write(f"  {len(kept)} device(s) keep {version}: {', '.join(kept)}; to "
                  "go back, deploy the previous bundle with --allow-downgrade\n")
    return 0


def _tally(rollout: dict) -> str:
    """deploy --wait's progress line: waves released and how many devices are in each state
    (a download's percentage left out, so that a line means a change of state)."""
    counts = Counter(entry.get("state", "?") for entry in rollout["devices"].values())
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return (f"rollout {rollout['id']} {rollout['status']}, {rollout['released']} of "
            f"{len(rollout['stages'])} wave(s) released: {states or 'no devices yet'}")


def _where(state: Path) -> str:
    """The state file as said to the operator: the default is relative to the current folder,
    so one run elsewhere finds none (the full path shows which file was read)."""
    return str(state) if state.is_absolute() else f"{state} (in {Path.cwd()})"


def _find(rollouts: list[dict], rollout: dict) -> dict | None:
    return next((r for r in rollouts if r.get("id") == rollout["id"]), None)


def _show(rollouts: list[dict], out: TextIO) -> None:
    for r in rollouts:
        group = f" group {r['group']}" if r.get("group") else ""
        out.write(f"{r['id']}  {r['name']} v{r['version']}{group}  {r['status'].upper()}"
                  + (f": {r['reason']}" if r.get("reason") else "") + "\n")
        for device, entry in sorted(r["devices"].items()):
            state = entry.get("state", "?")
            if state == "downloading" and entry.get("progress") is not None:
                state += f" {entry['progress']:.0%}"
            reason = f"  ({entry['reason']})" if entry.get("reason") and state in (
                "rolled_back", "refused", "failed", "cancelled", ro.SUPERSEDED, "offline") else ""
            out.write(f"  {device:<24} {state}{reason}\n")


def _signed_identity(bundle: Path) -> tuple[str, int]:
    """Name and version from signature.json (the device checks the signature itself)."""
    path = Path(bundle) / "signature.json"
    if not Path(bundle).is_dir():
        raise SyncError(f"bundle folder {bundle} does not exist; pass the folder that "
                        "`edge-opt export` wrote")
    try:
        data = json.loads(path.read_text())
        name, version = data["name"], data["version"]
    except FileNotFoundError:
        raise SyncError(f"{bundle} is not signed; sign it first: edge-opt sign {bundle} --key "
                        "KEY --version N") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SyncError(f"{path} cannot be read ({exc}); sign the bundle again") from None
    if not isinstance(name, str) or not isinstance(version, int) or isinstance(version, bool):
        raise SyncError(f"{path} has no valid name/version; sign the bundle again")
    return name, version


def check_bundle(bundle: Path) -> None:
    """Every file against manifest.json's sha256 and, when signed, manifest.json against
    signature.json: edge_sdk's checks, those `edge-opt sign` and the devices make. A bundle
    changed after signing is refused here, not by every device after its download."""
    # imported here: edge_sdk costs ~1 s at start-up that devices/tail/send need not pay
    from edge_sdk.errors import EdgeError, HashMismatchError
    from edge_sdk.hashing import sha256_file
    from edge_sdk.manifest import MANIFEST_NAME, Manifest
    from edge_sdk.trust import read_identity

    try:
        Manifest.read(bundle, verify=True)
        identity = read_identity(bundle)
    except HashMismatchError as exc:
        raise SyncError(f"{exc}, then sign it again (edge-opt sign)") from None
    except EdgeError as exc:
        raise SyncError(str(exc)) from None
    if identity is not None and identity.manifest_sha256 != sha256_file(
            Path(bundle) / MANIFEST_NAME):
        raise SyncError(f"{bundle}: manifest.json changed after the bundle was signed; "
                        "re-export it and sign it again (edge-opt sign)")
