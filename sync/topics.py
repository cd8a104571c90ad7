"""Topic layout ``edge/{fleet}/{device}/{stream}`` and the names reserved for the protocol."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sync.errors import PayloadError

ROOT = "edge"
STATUS = "status"  # retained online/offline; the Last Will sets it to offline
SEEN = "seen"  # retained heartbeat: when the device was last connected
TELEMETRY = "telemetry"  # periodic health, sent through the outbox
COMMAND = "cmd"  # cloud -> device requests
ACK = "ack"  # device -> cloud acknowledgements
# model rollouts (sync/rollout.py, edge_sdk/deploy_agent.py, sync/transfer.py): not data streams
DEPLOY = "deploy"  # retained desired model, cloud -> device (or @group)
DEPLOYMENT = "deployment"  # retained rollout report, device -> cloud
BLOB_NEED = "blob_need"  # chunks a device asks for again
RESERVED = frozenset({STATUS, SEEN, TELEMETRY, COMMAND, ACK, DEPLOY, DEPLOYMENT, BLOB_NEED})
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # device ids, streams, groups, deployment ids


def is_name(value: object) -> bool:
    """1-64 letters, digits, '.', '_' or '-': safe as one topic level (no '/', '+', '#')."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def topic(fleet: str, device: str, leaf: str) -> str:
    return f"{ROOT}/{fleet}/{device}/{leaf}"


def check_stream(stream: str) -> str:
    """Refuse stream names that would break the topic layout or shadow a protocol topic."""
    if not is_name(stream):
        raise PayloadError(
            f"stream {stream!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(no '/', '+' or '#')"
        )
    if stream in RESERVED:
        raise PayloadError(f"stream {stream!r} is reserved ({', '.join(sorted(RESERVED))})")
    return stream


@dataclass(frozen=True)
class TopicParts:
    fleet: str
    device: str
    leaf: str


def parse_topic(name: str) -> TopicParts | None:
    """Split an ``edge/...`` topic; None for anything else (a consumer should skip it)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != ROOT:
        return None
    return TopicParts(parts[1], parts[2], parts[3])


def filter_for(fleet: str, device: str | None, leaf: str | None, share: str | None = None) -> str:
    """A subscription filter; ``None`` means any device / any leaf; ``share`` adds $share."""
    base = topic(fleet, device or "+", leaf or "+")
    return f"$share/{share}/{base}" if share else base
