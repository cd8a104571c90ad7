"""A real Mosquitto per test (tests/sync's helper), for the fleet rollout tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sync"))
from synctest_broker import MOSQUITTO, Broker  # noqa: E402


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (apt-get install mosquitto; `make system-deps`)")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir).start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.proc.kill()
        b.proc.wait(timeout=10)
