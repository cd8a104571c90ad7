"""`edge-opt keygen` and `edge-opt sign` where they cannot write: one line naming the file and
the folder, exit 2, no traceback, nothing half-written. CI runs as root, which ignores chmod,
so the writes are made to fail with /proc (no new files there) and folders where files go."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_cli
from tests.fleet.fleet_helpers import make_bundle, make_keys

AS_ROOT = os.geteuid() == 0


def _one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-opt: error:"), result.stderr
    return lines[0]


def test_keygen_into_proc_is_one_line():
    line = _one_line(run_cli("edge-opt", "keygen", "--out", "/proc/fleet"))
    assert "cannot write fleet in /proc" in line and "writable --out" in line, line


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_keygen_into_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o500)
    try:
        line = _one_line(run_cli("edge-opt", "keygen", "--out", folder / "fleet"))
    finally:
        folder.chmod(0o700)
    assert "cannot write fleet in" in line and "Permission denied" in line, line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("blocked", [".signature.json.tmp", "signature.json"])
def test_sign_where_the_signature_cannot_go_is_one_line(tmp_path, blocked):
    """A folder where the signature (or its temporary file) goes makes the write fail."""
    private, _ = make_keys(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / blocked).mkdir()
    line = _one_line(run_cli("edge-opt", "sign", bundle, "--key", private, "--version", "3"))
    assert f"cannot write signature.json in {bundle}" in line and "directory" in line, line
    assert not (bundle / ".signature.json.tmp").is_file()  # nothing half-written left behind


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_sign_a_read_only_bundle_is_one_line(tmp_path):
    private, _ = make_keys(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "bundle")
    bundle.chmod(0o500)
    try:
        line = _one_line(run_cli("edge-opt", "sign", bundle, "--key", private, "--version", "3"))
    finally:
        bundle.chmod(0o700)
    assert "cannot write signature.json" in line and "Permission denied" in line, line
