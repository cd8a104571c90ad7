"""A rollout state file nested past the JSON parser's depth (a damaged or hostile --state) is
one line that names it and says what to do, not a RecursionError traceback."""

from __future__ import annotations

import pytest

from sync.errors import SyncError
from sync.rollout import RolloutStore
from tests.conftest import run_cli


@pytest.fixture
def deep(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    return path


def test_store_refuses_a_deeply_nested_state(deep):
    with pytest.raises(SyncError, match="nested too deeply.*move it aside"):
        RolloutStore(deep).load()


def test_rollouts_with_a_deeply_nested_state_is_one_line(deep):
    result = run_cli("edge-fleet", "rollouts", "--state", deep, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(deep) in lines[0] and "nested too deeply" in lines[0], lines
