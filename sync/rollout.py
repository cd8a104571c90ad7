"""Fleet side of a model rollout: canary, waves, halt on failures, durable state.

A rollout is a record in a JSON state file (replaced atomically, so it survives the fleet
tool being killed). `reconcile` is the whole controller: given what devices last reported
(their retained ``deployment`` and ``status`` messages), it updates each device's state,
releases the next wave when the current one has finished (healthy, failed, or offline: an
offline device keeps its retained deployment and takes it when it comes back), and halts the
rollout when more than `max_failures` devices failed their gate. Running it again with the same
observations changes nothing, so `edge-fleet rollouts` and `deploy --wait` can both drive it.

`cancel` stops a rollout for good (no further wave; deployments not yet started are taken
back, a finished rollout's included); the devices that installed it keep it.

A group rollout, once complete, leaves a retained deployment on the group's topic, which is
how devices that join the group later get the model.

Device reports are untrusted: a report whose fields have the wrong type is ignored and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sync import topics
from sync.errors import SyncError

FINAL_OK = ("healthy",)
FINAL_BAD = ("rolled_back", "refused", "failed")
CANCELLED = "cancelled"  # taken back by a halt, or abandoned by the device for a newer one
SUPERSEDED = "superseded"  # a newer rollout took the device over: this one leaves it alone
DONE_WITH = FINAL_OK + FINAL_BAD + (CANCELLED, SUPERSEDED)  # nothing more will change
CANCELLABLE = ("running", "done", "halted")  # a finished one may still have deployments out
DEVICE_STATES = ("queued", "downloading", "verifying", "activating") + FINAL_OK + FINAL_BAD
Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


def deploy_topic(fleet: str, device: str) -> str:
    return topics.topic(fleet, device, "deploy")


def group_topic(fleet: str, group: str) -> str:
    return f"{topics.ROOT}/{fleet}/@{group}/deploy"


def new_rollout(*, name: str, version: int, blob: dict, url: str | None,
                devices: list[str], group: str | None, canary: int, wave: int,
                max_failures: int, allow_downgrade: bool, gate: dict,
                bundle: str) -> dict[str, Any]:
    """A rollout record: devices split into a canary stage and waves."""
    if canary < 0 or wave < 1 or max_failures < 0:
        raise SyncError("--canary must be >= 0, --wave >= 1 and --max-failures >= 0")
    if not devices and group is None:
        raise SyncError("name the devices (--device ID ...) or a group (--group G)")
    rollout_id = f"{name}-v{version}-{uuid.uuid4().hex[:8]}"[-64:].lstrip("-.")
    rollout = {
        "id": rollout_id, "created": round(time.time(), 3), "bundle": bundle,
        "name": name, "version": version, "blob": blob, "url": url, "group": group,
        "canary": canary, "wave": wave, "max_failures": max_failures,
        "allow_downgrade": allow_downgrade, "gate": gate, "stages": [], "released": 0,
        "status": "running", "reason": "", "devices": {},
    }
    _split(rollout, list(dict.fromkeys(devices)))
    return rollout


def deployment_message(rollout: dict[str, Any]) -> bytes:
    body = {"id": rollout["id"], "name": rollout["name"], "version": rollout["version"],
            "blob": rollout["blob"], "allow_downgrade": rollout["allow_downgrade"],
            "gate": rollout["gate"]}
    if rollout.get("url"):
        body["url"] = rollout["url"]
    return json.dumps(body).encode()


def parse_report(payload: bytes) -> dict[str, Any] | None:
    """A device's retained deployment report, or None if malformed."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    if not isinstance(body.get("state"), str) or not isinstance(body.get("id"), (str, type(None))):
        return None
    progress = body.get("progress")
    if progress is not None and (not isinstance(progress, (int, float)) or
                                 not 0 <= progress <= 1):
        return None
    groups = body.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None
    reason = body.get("reason", "")
    active = body.get("active")
    return {"id": body["id"], "state": body["state"][:32], "progress": progress,
            "reason": reason[:300] if isinstance(reason, str) else "",
            "groups": groups, "active": active if isinstance(active, dict) else None}


def reconcile(rollout: dict[str, Any], reports: dict[str, dict], online: dict[str, bool],
              publish: Publish, fleet: str) -> bool:
    """Advance one rollout from the latest observations; True if anything changed."""
    before = json.dumps(rollout, sort_keys=True)
    assign_group(rollout, reports)
    released = observe(rollout, reports, online)
    if rollout["status"] == "running":
        failed = [d for d, e in rollout["devices"].items() if e["state"] in FINAL_BAD]
        if len(failed) > rollout["max_failures"]:
            rollout["status"] = "halted"
            rollout["reason"] = (f"{len(failed)} device(s) failed (at most "
                                 f"{rollout['max_failures']} allowed): {failed[0]}: "
                                 f"{rollout['devices'][failed[0]].get('reason', '')}")
            for device in released:  # not started yet: take the deployment back
                if rollout["devices"][device]["state"] in ("queued", "offline"):
                    publish(deploy_topic(fleet, device), b"", True)
                    rollout["devices"][device]["state"] = CANCELLED
        elif all(rollout["devices"][d]["state"] in DONE_WITH + ("offline",) for d in released):
            if rollout["released"] < len(rollout["stages"]):
                for device in rollout["stages"][rollout["released"]]:
                    if rollout["devices"].get(device, {}).get("state") == SUPERSEDED:
                        continue
                    publish(deploy_topic(fleet, device), deployment_message(rollout), True)
                    rollout["devices"][device] = {"state": "queued"}
                rollout["released"] += 1
            else:
                rollout["status"] = "done"
                if rollout["group"] is not None:  # devices that join later get it from here
                    publish(group_topic(fleet, rollout["group"]), deployment_message(rollout),
                            True)
    return json.dumps(rollout, sort_keys=True) != before


def cancel(rollout: dict[str, Any], reports: dict[str, dict], online: dict[str, bool],
           publish: Publish, fleet: str, reason: str,
           rollouts: list[dict[str, Any]] | None = None) -> list[str]:
    """Stop a rollout for good: no further wave; devices never told are cancelled; released
    devices that have not finished get their deployment taken back (one that has not begun
    activating drops it and reports ``cancelled``; one already on trial finishes its health
    gate). A finished (done or halted) rollout can be cancelled too: its retained deployments
    still wait for the devices that were offline, and a done group rollout's deployment on the
    group topic for the devices that join later (given back to the group's previous done
    rollout, if any: `rollouts` is the whole list, to find it). Devices that installed the
    model keep it: nothing on the fleet side can send a device back to its previous slot
    (only its own health gate does). Returns them."""
    status = rollout.get("status")
    if status not in CANCELLABLE:
        raise SyncError(f"rollout {rollout.get('id')} is already {status}: there is nothing "
                        "left to cancel")
    released = observe(rollout, reports, online)  # a device may have finished meanwhile
    for device, entry in rollout["devices"].items():
        if entry["state"] in DONE_WITH:
            continue
        if device in released:
            publish(deploy_topic(fleet, device), b"", True)
        if entry["state"] in ("waiting", "queued", "offline"):
            rollout["devices"][device] = {"state": CANCELLED, "reason": reason}
    holds_group = status == "done" and rollout["group"] is not None and group_holder(
        rollouts or [rollout], rollout["group"]) is rollout
    rollout["status"], rollout["reason"] = CANCELLED, reason
    if holds_group:
        topic = group_topic(fleet, rollout["group"])
        publish(topic, retained_for(rollouts or [rollout], fleet, topic), True)
    return [d for d in released if rollout["devices"][d]["state"] in FINAL_OK]


def cancellable(rollout: dict[str, Any]) -> bool:
    """Whether `cancel` would change anything: a running rollout, or a finished one that still
    has a deployment out (a device that has not finished it, a done group's topic)."""
    status = rollout.get("status")
    return status == "running" or (status in CANCELLABLE and (
        bool(pending(rollout)) or (status == "done" and rollout.get("group") is not None)))


def assign_group(rollout: dict[str, Any], reports: dict[str, dict]) -> None:
    """A group rollout's devices: the members that reported so far, split into stages once."""
    if rollout["group"] is not None and rollout["released"] == 0 and not rollout["stages"]:
        members = sorted(d for d, r in reports.items() if rollout["group"] in r["groups"])
        _split(rollout, members)


def owner(rollouts: list[dict[str, Any]], device: str) -> dict[str, Any] | None:
    """The newest rollout whose deployment the device's topic should hold: one that published
    to it and was neither superseded there nor took it back (halt, cancel: a cancelled
    rollout took back every device that had not finished it)."""
    for r in reversed(rollouts):
        released = [d for stage in r["stages"][:r["released"]] for d in stage]
        state = r["devices"].get(device, {}).get("state")
        if device in released and state not in (SUPERSEDED, CANCELLED) and (
                r.get("status") != CANCELLED or state in DONE_WITH):
            return r
    return None


def group_holder(rollouts: list[dict[str, Any]], group: str) -> dict[str, Any] | None:
    """The rollout whose deployment a group topic holds: the group's newest done rollout."""
    return next((r for r in reversed(rollouts)
                 if r.get("group") == group and r.get("status") == "done"), None)


def retained_for(rollouts: list[dict[str, Any]], fleet: str, topic: str) -> bytes:
    """What a device's or group's deploy topic should retain by the state file (b"": none),
    to put a topic right that a run published to while another changed the rollout."""
    name = topic.split("/")[-2]
    holder = group_holder(rollouts, name[1:]) if name[:1] == "@" else owner(rollouts, name)
    return b"" if holder is None else deployment_message(holder)


def observe(rollout: dict[str, Any], reports: dict[str, dict],
            online: dict[str, bool]) -> list[str]:
    """Each released device's state from its latest report and presence; returns them."""
    released = [d for stage in rollout["stages"][:rollout["released"]] for d in stage]
    for device in released:
        entry = rollout["devices"].setdefault(device, {"state": "queued"})
        report = reports.get(device)
        if entry["state"] == SUPERSEDED:
            continue
        if report is not None and report["id"] == rollout["id"]:
            entry.update(state=report["state"], progress=report["progress"],
                         reason=report["reason"])
            if entry["state"] not in DONE_WITH and online.get(device) is False:
                # its retained report is stale: a device that died mid-download must not hold
                # the rollout for ever (it resumes when it comes back, like any offline one)
                entry.update(state="offline", reason=f"last reported {report['state']}")
        elif entry["state"] not in DONE_WITH:
            entry["state"] = "queued" if online.get(device) else "offline"
        if rollout["status"] == CANCELLED and entry["state"] in ("queued", "offline"):
            # its deployment was taken back: it will not start it (or resume it) any more
            entry.update(state=CANCELLED, reason=rollout["reason"])
    return released


def pending(rollout: dict[str, Any]) -> list[str]:
    """Released devices that have not finished (still working, queued or offline)."""
    released = [d for stage in rollout["stages"][:rollout["released"]] for d in stage]
    return [d for d in released if rollout["devices"].get(d, {}).get("state") not in DONE_WITH]


def supersede(older: dict[str, Any], newer: dict[str, Any]) -> list[str]:
    """Hand the devices `newer` targets over from a running `older` rollout: they are never
    published to by it again, nor taken back by its halt (which would clear the newer
    deployment on their topic), so a later wave of `older` cannot overwrite an operator's
    newer choice (an explicit downgrade above all). A group rollout that shares a device or
    its group stops whole: its group deployment, published at its end, would reach them too.
    A finished or halted rollout's devices that never finished are handed over as well, or it
    would wait on them for ever. Returns the devices taken over."""
    if older.get("id") == newer["id"]:
        return []
    running = older.get("status") == "running"  # else only its unfinished devices change
    taken = [d for d, e in older["devices"].items() if d in newer["devices"] and
             e["state"] not in DONE_WITH and (running or e["state"] != "waiting")]
    same_group = running and older.get("group") is not None and older["group"] == newer["group"]
    if not taken and not same_group:
        return []
    reason = f"superseded by rollout {newer['id']} ({newer['name']} v{newer['version']})"
    whole = running and older.get("group") is not None
    for device, entry in older["devices"].items():
        if device in taken or (whole and entry["state"] == "waiting"):
            older["devices"][device] = {"state": SUPERSEDED, "reason": reason}
    if running and (whole or all(e["state"] in DONE_WITH for e in older["devices"].values())):
        older["status"], older["reason"] = SUPERSEDED, reason
    return taken


def _split(rollout: dict[str, Any], devices: list[str]) -> None:
    rest = list(devices)
    if rollout["canary"] and rest:
        rollout["stages"].append(rest[:rollout["canary"]])
        rest = rest[rollout["canary"]:]
    while rest:
        rollout["stages"].append(rest[:rollout["wave"]])
        rest = rest[rollout["wave"]:]
    for device in devices:
        rollout["devices"].setdefault(device, {"state": "waiting"})


RECORD = {"id": str, "name": str, "version": int, "blob": dict, "url": (str, type(None)),
          "group": (str, type(None)), "canary": int, "wave": int, "max_failures": int,
          "allow_downgrade": bool, "gate": dict, "stages": list, "released": int,
          "status": str, "reason": str, "devices": dict}


def damage(rollout: Any) -> str:
    """What makes a state file's rollout record unusable ("" if nothing): a hand-edited or
    truncated record must be one line naming it, not a traceback deep in `reconcile`."""
    if not isinstance(rollout, dict):
        return "not a JSON object"
    for key, kind in RECORD.items():
        if key not in rollout:
            return f"no {key!r}"
        if not isinstance(rollout[key], kind) or (kind is int and isinstance(rollout[key], bool)):
            return f"{key!r} is {type(rollout[key]).__name__}"
    if not all(isinstance(stage, list) and all(isinstance(d, str) for d in stage)
               for stage in rollout["stages"]):
        return "'stages' is not lists of device ids"
    if not 0 <= rollout["released"] <= len(rollout["stages"]):
        return "'released' does not match 'stages'"
    if not all(isinstance(e, dict) and isinstance(e.get("state"), str)
               for e in rollout["devices"].values()):
        return "a device has no 'state'"
    return ""


class RolloutStore:
    """The durable state file: every rollout, newest last."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise SyncError(f"rollout state {self.path} cannot be read ({exc}); move it aside "
                            "to start afresh") from None
        except RecursionError:  # JSON nested past the parser's depth
            raise SyncError(f"rollout state {self.path} is nested too deeply to be an edge-fleet "
                            "state file; move it aside to start afresh") from None
        rollouts = data.get("rollouts") if isinstance(data, dict) else None
        if not isinstance(rollouts, list):
            raise SyncError(f"rollout state {self.path} is not an edge-fleet state file")
        for number, rollout in enumerate(rollouts, 1):
            problem = damage(rollout)
            if problem:
                name = rollout.get("id") if isinstance(rollout, dict) else None
                raise SyncError(f"rollout state {self.path}: rollout {number}"
                                + (f" ({name})" if isinstance(name, str) else "")
                                + f" is damaged ({problem}); remove it from the file, or move "
                                "the file aside to start afresh")
        return rollouts

    @contextlib.contextmanager
    def locked(self) -> Iterator[list[dict[str, Any]]]:
        """The rollouts, loaded under an exclusive lock and saved when the block changed
        them: two edge-fleet runs sharing the file (a `deploy --wait` and another `deploy`)
        never overwrite each other's rollouts. A block that raises saves nothing."""
        lock = None
        with contextlib.suppress(OSError):  # a read-only folder: reading needs no lock
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(f".{self.path.name}.lock"), "a")  # noqa: SIM115
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            rollouts = self.load()
            before = json.dumps(rollouts, sort_keys=True)
            yield rollouts
            if json.dumps(rollouts, sort_keys=True) != before:
                self.save(rollouts)
        finally:
            if lock is not None:
                lock.close()

    def save(self, rollouts: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"rollouts": rollouts}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            # the rename itself is on disk only once the folder is: a power cut must not
            # bring back a state file without the rollout whose canary was just published
            from edge_sdk.durable import fsync_dir  # here: edge_sdk's import costs ~0.7 s

            fsync_dir(self.path.parent)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def check_writable(self) -> None:
        """Create and remove a file where ``save`` writes, so that a deploy whose rollout could
        not be recorded is refused before it publishes anything."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".probe",
                                         dir=self.path.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> SyncError:
        return SyncError(f"cannot write rollout state {self.path}: {exc.strerror or exc}; "
                         "pass a writable --state FILE")
