"""Fixtures for the fleet console: a real PostgreSQL (one server per test session, a fresh
database per test), database URLs for both engines, a raw MQTT publisher, and `edge-fleet
serve` run as a process on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from consoletest_helpers import Publisher, ServeProcess, ready
from consoletest_pg import PgServer, require_pg_bindir
from synctest_broker import REPO_ROOT, free_port, wait_for


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(require_pg_bindir()).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "console.db")
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def publisher(broker) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    yield p
    p.close()


@pytest.fixture
def serve_factory(broker) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(db: str, *extra: str, token: str | None = None, web: bool = True,
              ready_wait: float = 0.0) -> ServeProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "EDGE_CONSOLE_TOKEN"}
        if token is not None:
            env["EDGE_CONSOLE_TOKEN"] = token
        cmd = [sys.executable, "-m", "sync.fleet", "--broker", broker.url, "serve", "--db", db,
               "--listen", f"127.0.0.1:{port}", *extra]
        if not web:
            cmd.append("--no-web")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        serve = ServeProcess(proc, port, token)
        started.append(serve)
        wait_for(lambda: ready(serve, web), 60, "edge-fleet serve to answer")
        time.sleep(ready_wait)
        return serve

    yield start
    for s in started:
        s.stop()
