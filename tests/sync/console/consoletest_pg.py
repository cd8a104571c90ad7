"""A throwaway PostgreSQL server for tests: initdb + pg_ctl from Debian's `postgresql` package,
on a free loopback port in a fresh folder, run as an unprivileged user when we are root
(PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from synctest_broker import free_port


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def require_pg_bindir() -> Path:
    """PostgreSQL's programs, or fail the test: `make test` installs them (no silent skip)."""
    import pytest

    bindir = pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL not installed: run `make system-deps`", pytrace=False)
    return bindir


def _runas() -> list[str]:
    """Prefix that drops root to the `postgres` account (or `nobody`); nothing otherwise."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root and neither user postgres nor nobody exists")


@dataclass
class PgServer:
    bindir: Path
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edge-pg-")))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*_runas(), *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[-2000:]}")

    def start(self) -> PgServer:
        self.root.chmod(0o755)
        prefix = _runas()
        if prefix:
            user = prefix[2]
            entry = pwd.getpwnam(user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--no-sync")
        return self.resume()

    def resume(self) -> PgServer:
        """Start the server on its data folder (again, after ``halt``)."""
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c fsync=on "
                "-c max_connections=50 -c shared_buffers=64MB")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                  str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start")
        return self

    def create_database(self) -> str:
        """A fresh database per test, so tests never see each other's rows."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def halt(self) -> None:
        """Stop the server abruptly (a crash, as far as clients can tell); data stays."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                  "-w", "stop")

    def stop(self) -> None:
        try:
            self.halt()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
