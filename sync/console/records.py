"""What the console stores, parsed and checked from untrusted MQTT messages.

Each record type has a parser; ``parse_message`` picks one by topic leaf from a small registry.
Anything malformed raises ``PayloadError`` (the ingest counts it and skips the message); a
message whose envelope names another device or stream than its topic is refused too, so one
device cannot write into another's history.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync import topics
from sync.commands import parse_ack
from sync.envelope import decode_envelope, valid_ts
from sync.errors import PayloadError

ROLLOUT = "deployment"  # a device's retained rollout report (edge_sdk.deploy_agent)
MAX_TEXT = 200  # model names, versions, states: longer is not a name
MAX_SOURCES_DOWN = 64  # names in a telemetry `sources_down` list: more is not a camera count
SOURCES_DOWN = "sources_down"
# A JSON escape that may decode to NUL or half a surrogate pair: only then is the parsed
# message walked (a pair, e.g. an escaped emoji, is fine and passes the walk).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


@dataclass(frozen=True)
class MessageRow:
    """A data or telemetry envelope, stored once per (device, stream, seq, id): a re-delivery
    is dropped, a device whose sequence restarted (new ids, seq from 1 again) is kept."""

    device: str
    stream: str
    seq: int
    msg_id: str
    ts: float
    received: float
    payload: str  # the payload re-encoded as compact JSON
    # Fields refused and left out of ``payload`` (the rest is stored): "name: why", counted
    # by the ingest as ``malformed_fields``.
    bad_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusRow:
    """A retained status or heartbeat: who the device is and when it was last heard of."""

    device: str
    fleet: str
    ts: float | None
    state: str | None = None
    model: str | None = None
    version: str | None = None
    uptime_s: float | None = None
    raw: str | None = None  # None for a heartbeat (`seen`), which only moves last_seen


@dataclass(frozen=True)
class AckRow:
    device: str
    cmd_id: str | None
    name: str | None
    ok: bool
    result: str | None
    error: str | None
    ts: float | None
    received: float


@dataclass(frozen=True)
class RolloutRow:
    rollout: str
    device: str
    state: str
    detail: str
    ts: float


Record = MessageRow | StatusRow | AckRow | RolloutRow


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise PayloadError(f"{key!r} must be a string of at most {MAX_TEXT} characters")
    return value


def check_sources_down(value: Any) -> list[str]:
    """A telemetry ``sources_down`` (the sources a device is reopening): a list of at most
    ``MAX_SOURCES_DOWN`` non-empty strings of at most ``MAX_TEXT`` characters, else
    ``PayloadError`` (the console shows these names to operators and in alerts)."""
    if not isinstance(value, list) or len(value) > MAX_SOURCES_DOWN:
        raise PayloadError(f"{SOURCES_DOWN!r} must be a list of at most {MAX_SOURCES_DOWN} "
                           f"names, not {value!r:.60}")
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TEXT:
            raise PayloadError(f"{SOURCES_DOWN!r} must hold names of 1-{MAX_TEXT} "
                               f"characters, not {name!r:.60}")
    return value


def sources_down(values: Any) -> list[str] | None:
    """The stored telemetry's ``sources_down``; None if not reported or not valid (a row
    stored before ingest checked it must not break the fleet table or the alerts)."""
    if not isinstance(values, dict) or SOURCES_DOWN not in values:
        return None
    try:
        return check_sources_down(values[SOURCES_DOWN])
    except PayloadError:
        return None


def _telemetry_fields(payload: Any) -> tuple[Any, tuple[str, ...]]:
    """Telemetry with its invalid checked fields left out, and why: one bad field of a
    report must not cost the fps, latency and the rest of it."""
    if not isinstance(payload, dict) or SOURCES_DOWN not in payload:
        return payload, ()
    try:
        check_sources_down(payload[SOURCES_DOWN])
    except PayloadError as exc:
        rest = {k: v for k, v in payload.items() if k != SOURCES_DOWN}
        return rest, (f"{SOURCES_DOWN}: {exc}"[:300],)
    return payload, ()


def _json(value: Any) -> str:
    """Compact JSON for storage; NaN and infinities (``1e400`` parses as one) are refused
    (ValueError -> PayloadError): the API could not send them back as JSON."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _check_text(data: bytes) -> None:
    """Refuse what a database cannot store or the API cannot send back: bytes that are not
    UTF-8 (``json.loads`` lets encoded surrogates through), and strings holding NUL or a lone
    surrogate (JSON escapes ``\\u0000``, ``\\ud800``), anywhere in the message."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("not UTF-8") from None
    if not _SUSPECT_ESCAPE.search(text):
        return
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return  # the parser says what is wrong with it
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            if "\x00" in v:
                raise PayloadError("a string holds a NUL character (\\u0000)")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise PayloadError("a string holds a lone surrogate (e.g. \\ud800)") from None


def _object(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise PayloadError("not a JSON object")
    return body


def _status(parts: topics.TopicParts, data: bytes, received: float) -> StatusRow:
    body = _object(data)
    ts = body.get("ts")
    if ts is not None and not valid_ts(ts):
        raise PayloadError(f"'ts' must be a Unix time, not {ts!r:.40}")
    uptime = body.get("uptime_s")
    if uptime is not None and not (valid_ts(uptime) and uptime < 1e10):
        raise PayloadError(f"'uptime_s' must be a number of seconds, not {uptime!r:.40}")
    return StatusRow(
        parts.device, parts.fleet, float(ts) if ts is not None else None,
        _text(body, "state"), _text(body, "model"), _text(body, "version"),
        float(uptime) if uptime is not None else None, _json(body),
    )  # fmt: skip


def _seen(parts: topics.TopicParts, data: bytes, received: float) -> StatusRow:
    ts = _object(data).get("ts")
    if not valid_ts(ts):
        raise PayloadError(f"'ts' must be a Unix time, not {ts!r:.40}")
    return StatusRow(parts.device, parts.fleet, float(ts))


def _ack(parts: topics.TopicParts, data: bytes, received: float) -> AckRow:
    ack = parse_ack(data)
    body = _object(data)
    _text(body, "id"), _text(body, "name")  # refuse ids/names that are not short strings
    ts = body.get("ts")
    result = None if ack.result is None else _json(ack.result)
    error = None if ack.error is None else str(ack.error)[:2000]
    return AckRow(parts.device, ack.id, ack.name, ack.ok, result, error,
                  float(ts) if valid_ts(ts) else None, received)  # fmt: skip


def _rollout(parts: topics.TopicParts, data: bytes, received: float) -> RolloutRow | None:
    body = _object(data)
    rollout, state = _text(body, "id"), _text(body, "state")
    if not state:
        raise PayloadError("a deployment report needs a 'state' string")
    if not rollout:  # a device that never took part in a rollout
        return None
    ts = body.get("ts", received)
    if not valid_ts(ts):
        raise PayloadError(f"'ts' must be a Unix time, not {ts!r:.40}")
    return RolloutRow(rollout, parts.device, state, _json(body), float(ts))


def _envelope(parts: topics.TopicParts, data: bytes, received: float) -> MessageRow:
    env = decode_envelope(data)
    if env.device != parts.device or env.stream != parts.leaf:
        raise PayloadError(
            f"envelope says {env.device}/{env.stream} but came on {parts.device}/{parts.leaf}"
        )
    body, bad = env.payload, ()
    if env.stream == topics.TELEMETRY:
        body, bad = _telemetry_fields(body)
    return MessageRow(env.device, env.stream, env.seq, env.id, env.ts, received, _json(body),
                      bad)  # fmt: skip


Parser = Callable[[topics.TopicParts, bytes, float], "Record | None"]
PARSERS: dict[str, Parser] = {
    topics.STATUS: _status,
    topics.SEEN: _seen,
    topics.ACK: _ack,
    ROLLOUT: _rollout,
}
# Requests to devices (commands, deployments) and model-transfer traffic: not reports.
IGNORED = frozenset({topics.COMMAND, "deploy", "blob_need"})
IGNORED_DEVICES = ("_blobs", "@")  # chunk topics; group deployments edge/{fleet}/@group/deploy


def parse_message(topic: str, data: bytes, received: float | None = None) -> Record | None:
    """The record a message carries; None for what the console does not store (requests,
    cleared retained messages, topics outside ``edge/...``); ``PayloadError`` if malformed."""
    parts = topics.parse_topic(topic)
    if parts is None or parts.leaf in IGNORED or parts.device.startswith(IGNORED_DEVICES):
        return None
    if not data:  # a cleared retained message
        return None
    if not parts.device or not parts.leaf:
        raise PayloadError(f"topic {topic!r:.120} has an empty level")
    if not topics.is_name(parts.device) or not topics.is_name(parts.leaf):
        # stored as keys: a 3,000-character name would exceed PostgreSQL's index row limit
        raise PayloadError(f"topic {topic!r:.120} does not name a device and stream "
                           "(1-64 letters, digits, '.', '_' or '-' each)")
    parser = PARSERS.get(parts.leaf, _envelope)
    try:
        _check_text(data)
        return parser(parts, data, time.time() if received is None else received)
    except PayloadError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. allow_nan in json.dumps
        raise PayloadError(f"{type(exc).__name__}: {exc}"[:300]) from None
