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


def test_deploy_and_the_store_refuse_deeply_nested_json_files(tmp_path, deep):
    """The same for a bundle's signature.json (read by `edge-fleet deploy`) and the device
    store's active.json."""
    from edge_sdk.errors import BundleError
    from edge_sdk.store import Store
    from tests.fleet.fleet_helpers import make_bundle

    bundle = make_bundle(tmp_path / "b")
    (bundle / "signature.json").write_text(deep.read_text())
    result = run_cli("edge-fleet", "--broker", "mqtt://127.0.0.1:1", "deploy", bundle,
                     "--device", "cam", "--state", tmp_path / "state.json", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "signature.json cannot be read" in result.stderr
    store = Store(tmp_path / "store")
    (store.root / "active.json").write_text(deep.read_text())
    with pytest.raises(BundleError, match="is damaged"):
        store.active()
