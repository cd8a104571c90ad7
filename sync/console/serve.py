"""``edge-fleet serve``: ingest + alerts + dashboard in one process (or ingest only).

Imported by ``sync.fleet`` for its argument parser only: the web stack and database drivers
(the ``console`` extra) are imported when the command runs, so ``edge-fleet devices/tail``
keep working on an install without them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from sync.config import SyncConfig
from sync.errors import ConfigError

log = logging.getLogger("sync.console")

TOKEN_ENV = "EDGE_CONSOLE_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

EPILOG = f"""\
The API token (needed for anything that changes state, e.g. sending commands) comes from
${TOKEN_ENV} or --token-file; without one the console is read-only.

examples:
  edge-fleet serve                                   # console.db, http://127.0.0.1:8080
  edge-fleet --broker mqtt://10.0.0.5:1883 serve --db postgresql://console@db/fleet
  edge-fleet serve --db postgresql://console@db/fleet --no-web   # one more ingest process
  edge-fleet serve --alerts my-alerts.yaml --webhook https://hooks.example.com/edge
"""


def add_parser(sub: Any, connection_options: Callable[[argparse.ArgumentParser, bool], None]
               ) -> None:  # fmt: skip
    p = sub.add_parser(
        "serve",
        usage="edge-fleet serve [--db URL] [--listen HOST:PORT] [--alerts YAML] [options]",
        help="fleet console: store what devices send (SQLite/PostgreSQL), alerts, dashboard",
        description=("Ingest the fleet's MQTT traffic into a database (each message once, "
                     "also when a device's sequence starts over), raise alerts, and serve a "
                     "live dashboard and JSON API."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default="console.db", metavar="URL",
                   help="a SQLite file (default console.db) or postgresql://user@host/db")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where the dashboard listens (default 127.0.0.1:8080, loopback only)")
    p.add_argument("--share", default="console", metavar="GROUP",
                   help="shared-subscription group: processes of one group split the "
                        "messages (default: console)")
    p.add_argument("--no-share", action="store_true",
                   help="a plain subscription: this process gets every message")
    p.add_argument("--session", metavar="NAME",
                   help="persistent MQTT session (client id NAME): the broker queues for us "
                        "while we are down")
    p.add_argument("--alerts", metavar="YAML", type=Path,
                   help="alert thresholds overriding the defaults (see sync/console/alerts.yaml)")
    p.add_argument("--webhook", metavar="URL", help="POST every alert open/resolve here (JSON)")
    p.add_argument("--alert-topic", default="console/{fleet}/alerts", metavar="TOPIC",
                   help="MQTT topic for alert notices (default console/{fleet}/alerts)")
    p.add_argument("--token-file", metavar="FILE", type=Path,
                   help=f"file holding the API token (or set ${TOKEN_ENV})")
    p.add_argument("--no-web", action="store_true", help="ingest and alerts only, no dashboard")
    connection_options(p, True)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    digits = port.isascii() and port.isdigit()  # "²" passes isdigit() but not int()
    if not sep or not host or not digits or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {text!r}: write HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _bind(host: str, port: int, text: str) -> socket.socket:
    """The dashboard's listening socket, bound before anything else starts (uvicorn is handed
    it), so a port in use is one line and exit 2, not an error after start-up."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]  # fmt: skip
    except socket.gaierror as exc:
        raise ConfigError(f"--listen {text}: unknown host {host!r} ({exc.strerror})") from None
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        why = {errno.EADDRINUSE: "the port is in use (another console?): choose another",
               errno.EACCES: "permission denied (ports below 1024 need privileges)",
               errno.EADDRNOTAVAIL: "not an address of this machine"}.get(
                   exc.errno, exc.strerror or type(exc).__name__)  # fmt: skip
        raise ConfigError(f"--listen {text}: cannot listen there: {why}") from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            token = args.token_file.read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {exc.strerror}"
                              ) from None  # fmt: skip
        if len(token) < 16:
            raise ConfigError(f"the token in {args.token_file} is shorter than 16 characters: "
                              "use e.g. `openssl rand -hex 24 > FILE`")  # fmt: skip
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ConfigError(f"${TOKEN_ENV} is shorter than 16 characters: use e.g. "
                          "`openssl rand -hex 24`")  # fmt: skip
    return token or None


def _needs(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module}: pip install 'edge-ai-toolkit[console]'"
                          ) from None  # fmt: skip


def cmd_serve(args: argparse.Namespace, cfg: SyncConfig, err: TextIO) -> int:
    host, port = _listen(args.listen)
    token = _token(args)
    if args.webhook and urlsplit(args.webhook).scheme not in ("http", "https"):
        raise ConfigError(f"--webhook {args.webhook!r}: give an http:// or https:// URL")
    if any(c in args.alert_topic for c in "+#") or not args.alert_topic.strip("/"):
        raise ConfigError(f"--alert-topic {args.alert_topic!r}: a topic without + or #")
    _needs("yaml", "edge-fleet serve")
    if not args.no_web:
        _needs("starlette", "the dashboard")
        _needs("uvicorn", "the dashboard")
    from sync.console.alerts import AlertEngine, AlertNotice, Notifier, load_rules
    from sync.console.ingest import Ingest
    from sync.console.store import open_store

    rules = load_rules(args.alerts)
    logging.basicConfig(level=logging.WARNING, format="edge-fleet serve: %(message)s")
    listener = None if args.no_web else _bind(host, port, args.listen)
    try:
        store = open_store(args.db)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    share = None if args.no_share else args.share
    ingest = Ingest(cfg, store, share=share, session=args.session)
    alert_topic = args.alert_topic.replace("{fleet}", cfg.fleet)

    def publish_notice(notice: AlertNotice) -> None:
        ingest.publish(alert_topic, json.dumps(asdict(notice)).encode())

    notifier = Notifier(publish_notice, args.webhook)
    engine = AlertEngine(store, rules, notifier)

    ingest.hooks.append(engine.on_batch)
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep_loop, args=(engine, rules, stop, ingest),
                               name="console-offline", daemon=True)  # fmt: skip
    where = f"$share/{share}/..." if share else "a plain subscription"
    err.write(f"edge-fleet serve: database {store.dialect.name} {_safe_url(args.db)}, "
              f"broker {cfg.broker} fleet {cfg.fleet} ({where})\n")  # fmt: skip
    ingest.start()
    err.write(f"edge-fleet serve: subscribed to {', '.join(ingest.filters)}\n")
    err.flush()
    sweeper.start()
    try:
        if args.no_web:
            _wait_for_signal(stop)
        else:
            assert listener is not None
            _serve_web(store, args, cfg, listener, token, ingest, engine, notifier, err)
    finally:
        stop.set()
        ingest.stop()
        notifier.close()
        s = ingest.stats
        err.write(f"edge-fleet serve: received {s.received}, stored {s.stored}, duplicates "
                  f"{s.duplicates}, malformed {s.malformed}, rejected {s.rejected}, "
                  f"dropped_qos0 {s.dropped_qos0}, sequence_restarts {s.sequence_restarts}; "
                  f"alerts opened {engine.opened}, resolved {engine.resolved}\n")  # fmt: skip
        store.close()
    return 0


def _serve_web(store: Any, args: argparse.Namespace, cfg: SyncConfig, listener: socket.socket,
               token: str | None, ingest: Any, engine: Any, notifier: Any, err: TextIO
               ) -> None:  # fmt: skip
    import uvicorn

    from sync.console.store import open_store
    from sync.console.web import ConsoleState, build_app

    host, port = _listen(args.listen)
    web_store = open_store(args.db, migrate_schema=False)

    def stats() -> dict[str, Any]:
        return {**ingest.stats.to_dict(), "alerts_opened": engine.opened,
                "alerts_resolved": engine.resolved, "notices_sent": notifier.sent,
                "notice_errors": notifier.errors}  # fmt: skip

    state = ConsoleState(web_store, cfg.fleet, token, ingest.publish, stats)
    ingest.hooks.append(lambda batch: state.changed())
    if host not in LOOPBACK:
        err.write(f"edge-fleet serve: listening on {host}, reachable from the network; "
                  "put it behind TLS\n")  # fmt: skip
    if token is None:
        err.write(f"edge-fleet serve: no API token (${TOKEN_ENV} or --token-file): read-only\n")
    err.write(f"edge-fleet serve: dashboard on http://{host}:{port}/\n")
    err.flush()
    # timeout_graceful_shutdown: a connection still open after it (a stuck client) is cut,
    # so SIGTERM always ends the process in seconds.
    config = uvicorn.Config(build_app(state), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=3)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.shut_down()  # open dashboards' live streams end now, not never
            super().handle_exit(sig, frame)

    # uvicorn re-raises the signal that stopped it once it is done: let SIGTERM end here
    # quietly so the ingest still flushes and acknowledges its last batch.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Server(config).run(sockets=[listener])
    finally:
        listener.close()
        web_store.close()


def _sweep_loop(engine: Any, rules: dict[str, Any], stop: threading.Event, ingest: Any) -> None:
    """The offline rule runs on the clock; its errors are logged and counted, never fatal."""
    minutes = rules.get("offline", {}).get("minutes", 5)
    interval = min(10.0, max(0.5, minutes * 60 / 4))
    while not stop.wait(interval):
        try:
            engine.sweep()
        except Exception as exc:
            ingest.stats.hook_errors += 1
            log.warning("offline check failed: %r", exc)


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(1.0):
        pass


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url
