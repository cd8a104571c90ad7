"""The wire format of a data message: a JSON object with identity, order and the payload.

``id`` lets a consumer drop duplicates (QoS 1 is at-least-once); ``seq`` is per
(device, stream) and increases by one per accepted message, so a consumer sees gaps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sync.errors import PayloadError

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_payload(payload: Any) -> bytes:
    """Serialise the user's payload once, outside any lock; refuse what JSON cannot carry."""
    try:
        return _ENCODER.encode(payload).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"payload must be JSON-serialisable (dict, list, str, int, float, bool, None; "
            f"convert numpy values first): {exc}"
        ) from None


def encode_envelope(
    msg_id: str, device: str, stream: str, seq: int, ts: float, payload_json: bytes
) -> bytes:
    """Wrap already-encoded payload bytes; names are pre-validated so need no escaping."""
    head = (
        f'{{"id":"{msg_id}","device":"{device}","stream":"{stream}",'
        f'"seq":{seq},"ts":{ts:.6f},"payload":'
    )
    return head.encode("ascii") + payload_json + b"}"


@dataclass(frozen=True)
class Envelope:
    """A decoded data message as a consumer sees it."""

    id: str
    device: str
    stream: str
    seq: int
    ts: float
    payload: Any


def decode_envelope(data: bytes) -> Envelope:
    """Parse a message; raise ``PayloadError`` for anything that is not our envelope."""
    try:
        obj = json.loads(data)
        env = Envelope(
            id=str(obj["id"]),
            device=str(obj["device"]),
            stream=str(obj["stream"]),
            seq=int(obj["seq"]),
            ts=float(obj["ts"]),
            payload=obj["payload"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"not a sync envelope: {exc}") from None
    return env
