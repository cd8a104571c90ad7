"""Fixtures for the sync tests: a real Mosquitto per test (skipped only if it is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from synctest_broker import MOSQUITTO, Broker, Recorder


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (apt-get install mosquitto; `make system-deps`)")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir).start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.resume()
        b.proc.kill()
        b.proc.wait(timeout=10)


@pytest.fixture
def recorder_factory() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(port: int, topics: list[str], session: str | None = None) -> Recorder:
        r = Recorder(port, topics, session)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KB tmpfs of our own, to fill up; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small filesystem needs root to mount (tmpfs size=512k)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 512 KB tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
