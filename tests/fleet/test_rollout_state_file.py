"""The rollout state file: one nested past the JSON parser's depth (a damaged or hostile
--state) is one line that names it and says what to do, not a RecursionError traceback; a save
is on disk, rename included, before it returns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from sync.errors import SyncError
from sync.rollout import RolloutStore
from tests.conftest import ROOT, run_cli


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


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_saving_the_state_syncs_the_folder_after_the_rename(tmp_path):
    """The new state file is renamed into place; until its folder is fsynced a power cut can
    bring the old file back (a rollout whose canary is out, unknown to the state). Watched in
    the real system calls of a real save (strace), nothing replaced."""
    state = tmp_path / "fleet" / "rollouts.json"
    code = ("import sys; from sync.rollout import RolloutStore; "
            "RolloutStore(sys.argv[1]).save([{'id': 'r1'}])")
    trace = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=rename,renameat,renameat2,fsync", sys.executable,
         "-c", code, str(state)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert trace.returncode == 0, trace.stderr[-2000:]
    assert json.loads(state.read_text())["rollouts"] == [{"id": "r1"}]
    lines = trace.stderr.splitlines()
    renamed = next(i for i, line in enumerate(lines) if "rename" in line and
                   f'"{state}"' in line)
    assert any("fsync(" in line and f"<{state.parent}>" in line and "= 0" in line
               for line in lines[renamed + 1:]), "\n".join(lines[renamed:])


def _good_record() -> dict:
    from sync.rollout import new_rollout

    return new_rollout(name="tiny", version=2, blob={}, url=None, devices=["cam"], group=None,
                       canary=1, wave=1, max_failures=0, allow_downgrade=False, gate={},
                       bundle="v2")


@pytest.mark.parametrize("damage, said", [
    (lambda r: 1, "rollout 2 is damaged (not a JSON object)"),
    (lambda r: {"id": r["id"], "status": "running"}, "is damaged (no 'name')"),
    (lambda r: {**r, "stages": [["cam"]], "released": 3}, "'released' does not match"),
    (lambda r: {**r, "devices": {"cam": "healthy"}}, "a device has no 'state'"),
    (lambda r: {**r, "version": "2"}, "'version' is str"),
])
@pytest.mark.parametrize("command", [["rollouts"], ["rollouts", "--json"],
                                     ["rollouts", "cancel", "ID"],
                                     ["deploy", "bundle", "--device", "cam"]])
def test_a_damaged_rollout_record_is_one_line_naming_it(tmp_path, damage, said, command):
    """A state file whose rollout record lost a field (hand-edited, written by another tool)
    ended every edge-fleet command in a KeyError or AttributeError traceback."""
    good, bad = _good_record(), damage(_good_record())
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"rollouts": [good, bad]}))
    command = [good["id"] if a == "ID" else a for a in command]
    result = run_cli("edge-fleet", "--broker", "mqtt://127.0.0.1:1", *command, "--state", state,
                     timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and str(state) in lines[0], lines
    assert "remove it from the file, or move the file aside" in lines[0], lines
    assert json.loads(state.read_text()) == {"rollouts": [good, bad]}  # left as it was


def test_a_mistyped_rollout_id_is_answered_with_the_ids_it_may_mean(tmp_path):
    """`rollouts cancel` with a shortened or mistyped id said only "no rollout", and with the
    default (relative) --state run from another folder, not which file it had read."""
    state = tmp_path / "state.json"
    record = _good_record()
    RolloutStore(state).save([record])
    rid = record["id"]
    for typed in (rid[:-3], rid[:-1] + ("0" if rid[-1] != "0" else "1")):
        result = run_cli("edge-fleet", "--broker", "mqtt://127.0.0.1:1", "rollouts", "cancel",
                         typed, "--state", state, timeout=120)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert f"no rollout '{typed}' in {state}; did you mean {rid}?" in line, line
    result = run_cli("edge-fleet", "--broker", "mqtt://127.0.0.1:1", "rollouts", "cancel",
                     "nope", "--state", "no-such-state.json", timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"no rollout 'nope' in no-such-state.json (in {ROOT});" in result.stderr
    assert "did you mean" not in result.stderr
