"""Cloud-to-device commands: a request names a registered handler; every request, valid or
not, gets exactly one acknowledgement with a result or an error (never a crash).

Rules, because a command runs code on the device:
- Anything that goes wrong (malformed or huge or deeply nested JSON, unknown name, a handler's
  exception of any kind, ``SystemExit`` included) becomes an error ack and is counted in
  ``errors``; ``handle`` never raises, so the thread that calls it never dies.
- A command handed over as *retained* is refused (an error ack, once per id): the broker would
  hand it to the device again on every reconnect. (One published retained while the device
  is subscribed arrives as live, MQTT 3.1.1 clears the flag then, and runs once.)
- A request id seen before is not run again: a QoS 1 re-delivery gets the first answer again.
  The last ``_REMEMBER`` ids are kept, in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync.errors import PayloadError, SyncError

log = logging.getLogger("sync.commands")

MAX_REQUEST_BYTES = 256 * 1024  # a command is a name and a few arguments, not a payload
_REMEMBER = 1000  # request ids (and their answers) kept for de-duplication


@dataclass(frozen=True)
class Command:
    """A request as a handler receives it."""

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandAck:
    """The device's answer; ``ok`` False means ``error`` says what went wrong."""

    id: str | None
    name: str | None
    ok: bool
    result: Any = None
    error: str | None = None

    def to_json(self, device: str) -> bytes:
        body = {
            "id": self.id,
            "device": device,
            "name": self.name,
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
            "ts": round(time.time(), 6),
        }
        return json.dumps(body, separators=(",", ":")).encode("utf-8")


CommandHandler = Callable[[Command], Any]


def make_request(name: str, args: dict[str, Any] | None = None) -> tuple[str, bytes]:
    """Build a request (for ``edge-fleet send`` and tests); returns (id, payload)."""
    if args is not None and not isinstance(args, dict):
        raise PayloadError("command arguments must be a JSON object, e.g. '{\"level\": 2}'")
    cmd_id = uuid.uuid4().hex
    return cmd_id, json.dumps({"id": cmd_id, "name": name, "args": args or {}}).encode()


def parse_ack(data: bytes) -> CommandAck:
    try:
        obj = json.loads(data)
        return CommandAck(
            obj.get("id"), obj.get("name"), bool(obj["ok"]), obj.get("result"), obj.get("error")
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PayloadError(f"not a command acknowledgement: {exc}") from None


class CommandRegistry:
    """Handlers by name; ``handle`` turns any payload into an acknowledgement."""

    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, CommandAck] = OrderedDict()
        self.errors = 0  # requests answered with an error (re-sent answers not counted)

    def register(self, name: str, handler: CommandHandler, replace: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise SyncError("a command name must be a non-empty string")
        if not callable(handler):
            raise SyncError(f"handler for command {name!r} is not callable")
        with self._lock:
            if name in self._handlers and not replace:
                raise SyncError(f"command {name!r} already has a handler (pass replace=True)")
            self._handlers[name] = handler

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)

    @staticmethod
    def parse(data: bytes) -> Command:
        obj = _load_json(data)
        if not isinstance(obj, dict):
            raise PayloadError("malformed command: expected a JSON object")
        cmd_id, name, args = obj.get("id"), obj.get("name"), obj.get("args", {})
        if not isinstance(cmd_id, str) or not cmd_id:
            raise PayloadError("malformed command: 'id' must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise PayloadError("malformed command: 'name' must be a non-empty string")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise PayloadError("malformed command: 'args' must be a JSON object")
        return Command(cmd_id, name, args)

    def handle(self, data: bytes, retained: bool = False) -> CommandAck | None:
        """Parse, dispatch and answer one request; never raises.

        Returns None when nothing is to be sent: a retained request already refused once.
        """
        try:
            ack = self._answer(data, retained)
        except Exception as exc:  # a bug of ours must not end command handling either
            log.exception("command handling failed")
            ack = self._remember(
                CommandAck(None, None, False, error=f"internal error: {type(exc).__name__}")
            )
        return ack

    def count_error(self) -> None:
        """Count a failure that happened outside ``handle`` (e.g. encoding the ack)."""
        with self._lock:
            self.errors += 1

    def _answer(self, data: bytes, retained: bool) -> CommandAck | None:
        try:
            cmd = self.parse(data)
        except PayloadError as exc:
            ack = CommandAck(_best_effort_id(data), None, False, error=str(exc))
            if not retained:
                return self._remember(ack)
            key = ack.id or "sha1:" + hashlib.sha1(data).hexdigest()
            with self._lock:
                if key in self._answers:
                    return None  # refused on an earlier connect already
            return self._remember(ack, key)
        with self._lock:
            earlier = self._answers.get(cmd.id)
            handler = self._handlers.get(cmd.name)
        if earlier is not None:
            log.info("command %s (%s) seen before: %s", cmd.id, cmd.name,
                     "ignored (retained)" if retained else "answer sent again")
            return None if retained else earlier
        if retained:
            return self._remember(CommandAck(
                cmd.id, cmd.name, False,
                error="retained command refused: commands must be published without the "
                      "retain flag (a retained one would run again on every reconnect)",
            ))
        if handler is None:
            known = ", ".join(self.names()) or "none"
            return self._remember(CommandAck(
                cmd.id, cmd.name, False, error=f"unknown command {cmd.name!r} (known: {known})"
            ))
        try:
            result = handler(cmd)
            json.dumps(result)  # fail here, as an error ack, rather than when sending
        except BaseException as exc:  # SystemExit too: it would end only the thread, silently
            log.warning("command %s (%s) failed: %s: %s", cmd.id, cmd.name,
                        type(exc).__name__, exc)
            return self._remember(
                CommandAck(cmd.id, cmd.name, False, error=f"{type(exc).__name__}: {exc}")
            )
        return self._remember(CommandAck(cmd.id, cmd.name, True, result=result))

    def _remember(self, ack: CommandAck, key: str | None = None) -> CommandAck:
        key = key or ack.id
        with self._lock:
            if not ack.ok:
                self.errors += 1
            if key is not None:
                self._answers[key] = ack
                self._answers.move_to_end(key)
                while len(self._answers) > _REMEMBER:
                    self._answers.popitem(last=False)
        return ack


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's json reads them): a handler never sees them."""
    raise ValueError(f"{name} is not a JSON number")


def _load_json(data: bytes) -> Any:
    if len(data) > MAX_REQUEST_BYTES:
        raise PayloadError(
            f"malformed command: {len(data)} bytes is more than {MAX_REQUEST_BYTES}"
        )
    try:
        obj = json.loads(data, parse_constant=_no_constant)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # "\ud800": JSON escapes a lone surrogate, Unicode has none
        raise PayloadError("malformed command: a string holds a lone surrogate escape "
                           "(\\ud800-\\udfff), which is not Unicode text") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"malformed command: not JSON ({exc})") from None
    except RecursionError:
        raise PayloadError("malformed command: JSON nested too deeply") from None
    return obj


def _best_effort_id(data: bytes) -> str | None:
    """Recover the request id from a malformed request so the sender can match the ack."""
    try:
        obj = _load_json(data)
    except PayloadError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return obj["id"]
    return None
