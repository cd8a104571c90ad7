"""Cloud-to-device commands: a request names a registered handler; every request, valid or
not, gets exactly one acknowledgement with a result or an error (never a crash)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync.errors import PayloadError, SyncError


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
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"malformed command: not JSON ({exc})") from None
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

    def handle(self, data: bytes) -> CommandAck:
        """Parse, dispatch and answer one request; never raises."""
        try:
            cmd = self.parse(data)
        except PayloadError as exc:
            return CommandAck(_best_effort_id(data), None, False, error=str(exc))
        with self._lock:
            handler = self._handlers.get(cmd.name)
        if handler is None:
            known = ", ".join(self.names()) or "none"
            return CommandAck(
                cmd.id, cmd.name, False, error=f"unknown command {cmd.name!r} (known: {known})"
            )
        try:
            result = handler(cmd)
            json.dumps(result)  # fail here, as an error ack, rather than when sending
        except Exception as exc:  # a handler bug becomes an error ack, not a dead device
            return CommandAck(cmd.id, cmd.name, False, error=f"{type(exc).__name__}: {exc}")
        return CommandAck(cmd.id, cmd.name, True, result=result)


def _best_effort_id(data: bytes) -> str | None:
    """Recover the request id from a malformed request so the sender can match the ack."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return obj["id"]
    return None
