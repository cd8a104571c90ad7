"""The wire format of a data message: a JSON object with identity, order and the payload.

``id`` lets a consumer drop duplicates (QoS 1 is at-least-once); ``seq`` is per
(device, stream) and increases by one per accepted message, so a consumer sees gaps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sync import topics
from sync.errors import PayloadError

MAX_ID = 200  # a message id longer than this is not an id (and overflows database indexes)
MAX_TS = 32_503_680_000.0  # 3000-01-01: later (or negative) times are corrupt, not clocks
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


def valid_ts(value: Any) -> bool:
    """A plausible Unix time: a finite number between 1970 and the year 3000 (not a bool)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_TS
    )


def decode_envelope(data: bytes) -> Envelope:
    """Parse a message; raise ``PayloadError`` for anything that is not our envelope.

    Checked at this edge so the tools behind it never meet a wrong type: ``id`` a string of 1-200
    characters, ``device`` and ``stream`` names (``topics.is_name``), ``seq`` an integer >= 1,
    ``ts`` a plausible Unix time. Bounded, so one device's message cannot exceed what a
    consumer's database can index.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(f"not a sync envelope: not JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise PayloadError("not a sync envelope: not a JSON object")
    for key in ("id", "device", "stream"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise PayloadError(f"not a sync envelope: {key!r} must be a non-empty string")
    if len(obj["id"]) > MAX_ID:
        raise PayloadError(f"not a sync envelope: 'id' is longer than {MAX_ID} characters")
    for key in ("device", "stream"):
        if not topics.is_name(obj[key]):
            raise PayloadError(f"not a sync envelope: {key!r} {obj[key]!r:.70} is not a name "
                               "(1-64 letters, digits, '.', '_' or '-')")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**63:
        raise PayloadError(f"not a sync envelope: 'seq' must be an integer >= 1, not {seq!r:.40}")
    if not valid_ts(obj.get("ts")):
        raise PayloadError(
            f"not a sync envelope: 'ts' must be a Unix time, not {obj.get('ts')!r:.40}"
        )
    if "payload" not in obj:
        raise PayloadError("not a sync envelope: no 'payload'")
    return Envelope(obj["id"], obj["device"], obj["stream"], seq, float(obj["ts"]), obj["payload"])
