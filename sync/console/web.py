"""The dashboard and its JSON API (Starlette), with live updates as server-sent events.

Reads go straight to the database, so a console shows what every ingest process of its
group stored, not only its own. Anything that changes state (any POST, PUT, PATCH or DELETE,
e.g. sending a command) needs ``Authorization: Bearer TOKEN``; a console started without a
token refuses all of them. Live updates: ``/api/live`` sends a ``fleet`` event whenever the
fleet snapshot changes (checked when the local ingest commits, and at least every ``poll``
seconds for what other processes stored).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sync import topics
from sync.console.store import Store, StoreError
from sync.errors import SyncError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_COMMANDS = ("ping", "stats")  # what every MqttSync device answers
MAX_LIMIT = 10_000


@dataclass
class ConsoleState:
    """What the web app needs from the process that serves it."""

    store: Store
    fleet: str
    token: str | None
    send: Callable[[str, bytes], None] | None  # publish(topic, payload) on the ingest link
    stats: Callable[[], dict[str, Any]] = dict
    commands: tuple[str, ...] = DEFAULT_COMMANDS
    poll: float = 2.0
    stopping: bool = False  # set at shutdown: live streams end so the server can exit
    _waiters: list[asyncio.Event] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None

    def changed(self) -> None:
        """Called from the ingest's thread after a commit: wake the live streams."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for waiter in list(self._waiters):
                loop.call_soon_threadsafe(waiter.set)

    def shut_down(self) -> None:
        """End every live stream (they never end on their own, and the server waits for open
        connections before it exits, and only then the ingest flushes its last batch)."""
        self.stopping = True
        self.changed()


class TokenGuard:
    """Pure ASGI middleware: every non-read request must carry the console's bearer token."""

    def __init__(self, app: ASGIApp, state: ConsoleState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        token = self.state.token
        if not token:
            reply = _error(403, "this console was started without an API token, so it accepts "
                                "no changes: restart it with EDGE_CONSOLE_TOKEN or --token-file")
        else:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                await self.app(scope, receive, send)
                return
            reply = _error(401, "missing or wrong API token: send 'Authorization: Bearer TOKEN'")
            reply.headers["WWW-Authenticate"] = 'Bearer realm="edge-fleet console"'
        await reply(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BadQuery(ValueError):
    pass


def _float(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"{name}={raw!r:.40} must be a Unix time in seconds") from None
    if value != value or abs(value) > 1e12:
        raise BadQuery(f"{name}={raw!r:.40} must be a Unix time in seconds")
    return value


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:  # not "²"
        raise BadQuery(f"limit={raw!r:.40} must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _state(request: Request) -> ConsoleState:
    return request.app.state.console


async def _read(request: Request, fn: Callable[..., Any], *args: Any) -> Response:
    try:
        return JSONResponse(await run_in_threadpool(fn, *args))
    except StoreError as exc:
        return _error(503, str(exc))


def _page(name: str) -> Callable[[Request], Any]:
    async def page(request: Request) -> HTMLResponse:
        html = (resources.files("sync.console") / "static" / name).read_text("utf-8")
        return HTMLResponse(html)

    return page


async def api_devices(request: Request) -> Response:
    return await _read(request, _state(request).store.devices)


async def api_device(request: Request) -> Response:
    device = request.path_params["device"]
    try:
        row = await run_in_threadpool(_state(request).store.device, device)
    except StoreError as exc:
        return _error(503, str(exc))
    if row is None:
        return _error(404, f"no device {device!r} has reported to this console")
    return JSONResponse({**row, "commands": list(_state(request).commands)})


async def api_telemetry(request: Request) -> Response:
    try:
        since, until = _float(request, "since", 0.0), _float(request, "until", 1e12)
        limit = _limit(request, 1000)
    except BadQuery as exc:
        return _error(400, str(exc))
    return await _read(request, _state(request).store.telemetry,
                       request.path_params["device"], since, until, limit)  # fmt: skip


async def api_events(request: Request) -> Response:
    try:
        since, limit = _float(request, "since", 0.0), _limit(request, 100)
    except BadQuery as exc:
        return _error(400, str(exc))
    stream = request.query_params.get("stream", "events")
    return await _read(request, _state(request).store.events,
                       request.query_params.get("device"), stream, since, limit)  # fmt: skip


async def api_alerts(request: Request) -> Response:
    try:
        limit = _limit(request, 200)
    except BadQuery as exc:
        return _error(400, str(exc))
    open_only = request.query_params.get("open") in ("1", "true", "yes")
    return await _read(request, _state(request).store.alerts, open_only,
                       request.query_params.get("device"), limit)  # fmt: skip


async def api_acks(request: Request) -> Response:
    return await _read(request, _state(request).store.acks, request.path_params["device"])


async def api_rollouts(request: Request) -> Response:
    return await _read(request, _state(request).store.rollouts)


async def api_stats(request: Request) -> Response:
    state = _state(request)
    try:
        counts = await run_in_threadpool(state.store.counts)
        version = await run_in_threadpool(state.store.schema_version)
    except StoreError as exc:
        return _error(503, str(exc))
    return JSONResponse({"database": {**counts, "schema_version": version},
                         "ingest": state.stats()})  # fmt: skip


async def api_command(request: Request) -> Response:
    """Send a command to a device; its ack arrives through the ingest (see /acks)."""
    state = _state(request)
    device = request.path_params["device"]
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
        return _error(400, 'the body must be JSON: {"name": "ping", "args": {}}')
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return _error(400, 'the body must be a JSON object with a "name": {"name": "ping"}')
    name, args = body["name"], body.get("args") or {}
    if not topics.is_name(name) or not isinstance(args, dict):
        return _error(400, "name must be 1-64 letters, digits, '.', '_' or '-'; args an object")
    if not topics.is_name(device):  # "cam-01\n" too: it would be another topic
        return _error(400, f"{device!r:.70} is not a device id")
    if state.send is None:
        return _error(503, "this console has no broker connection to send commands on")
    cmd_id = uuid.uuid4().hex
    try:  # NaN, Infinity, 1e400 parse, but a device could not read them back as JSON
        args_json = json.dumps(args, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError):
        return _error(400, "args must be plain JSON: no NaN or Infinity, not nested that deep")
    payload = json.dumps({"id": cmd_id, "name": name, "args": args}).encode()
    try:
        await run_in_threadpool(state.store.record_command, cmd_id, device, name, args_json,
                                time.time())  # fmt: skip
        await run_in_threadpool(state.send, topics.topic(state.fleet, device, topics.COMMAND),
                                payload)  # fmt: skip
    except (StoreError, SyncError) as exc:
        return _error(503, str(exc))
    return JSONResponse({"id": cmd_id, "device": device, "name": name}, status_code=202)


def _snapshot(store: Store) -> dict[str, Any]:
    return {"devices": store.devices(), "alerts": store.alerts(open_only=False, limit=50),
            "events": store.events(limit=20), "rollouts": store.rollouts()}  # fmt: skip


async def api_live(request: Request) -> Response:
    state = _state(request)
    state._loop = asyncio.get_running_loop()

    async def stream() -> AsyncIterator[bytes]:
        waiter = asyncio.Event()
        state._waiters.append(waiter)
        last = ""
        try:
            yield b"retry: 2000\n\n"
            while not state.stopping and not await request.is_disconnected():
                try:
                    snap = await run_in_threadpool(_snapshot, state.store)
                    text = json.dumps(snap, separators=(",", ":"))
                except StoreError as exc:
                    text = json.dumps({"error": str(exc)})
                if text != last:
                    last = text
                    yield f"event: fleet\ndata: {text}\n\n".encode()
                else:
                    yield b": keep-alive\n\n"
                waiter.clear()
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=state.poll)
                await asyncio.sleep(0.2)  # at most five snapshots a second per viewer
        finally:
            state._waiters.remove(waiter)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip


def build_app(state: ConsoleState) -> ASGIApp:
    routes = [
        Route("/", _page("index.html")),
        Route("/devices/{device}", _page("device.html")),
        Route("/api/devices", api_devices),
        Route("/api/devices/{device}", api_device),
        Route("/api/devices/{device}/telemetry", api_telemetry),
        Route("/api/devices/{device}/acks", api_acks),
        Route("/api/devices/{device}/commands", api_command, methods=["POST"]),
        Route("/api/events", api_events),
        Route("/api/alerts", api_alerts),
        Route("/api/rollouts", api_rollouts),
        Route("/api/stats", api_stats),
        Route("/api/live", api_live),
        Mount("/static", app=StaticFiles(packages=[("sync.console", "static")])),
    ]
    app = Starlette(routes=routes)
    app.state.console = state
    return TokenGuard(app, state)
