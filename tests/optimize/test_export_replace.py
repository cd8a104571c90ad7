"""Re-exporting over a bundle folder replaces it whole, so it must hold nothing but what
edge-opt wrote there: results or clips a user kept beside the model are refused unless
--overwrite (a review found them silently deleted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.optimize.test_cli_hardening import _assert_one_line_error
from tests.optimize.tiny_models import tiny_classifier


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "fleet"
    result = run_cli("edge-opt", "keygen", "--out", key)
    assert result.returncode == 0, result.stderr
    return key


# (target, format) and the files edge-opt writes beside the manifest for it
ROUTES = [("x86-fp32", "onnx"), ("x86-fp32", "openvino"), ("jetson-fp32", "onnx")]


@pytest.mark.parametrize("target,fmt", ROUTES, ids=[f"{t}-{f}" for t, f in ROUTES])
def test_reexport_keeps_user_files_in_the_bundle_folder(tmp_path, tiny, key, target, fmt):
    out = tmp_path / "out"
    args = ["export", tiny, "-t", target, "--format", fmt, "--runs", "2", "--out", out,
            "--sign", key]
    first = run_cli("edge-opt", *args)
    assert first.returncode == 0, first.stderr
    bundle = out / target
    assert (bundle / "signature.json").is_file()
    (bundle / "results.jsonl").write_text('{"frame": 1}\n')
    (bundle / "clips").mkdir()
    (bundle / "clips" / "shot.jpg").write_bytes(b"\xff\xd8 a photo")
    before = _snapshot(out)

    refused = run_cli("edge-opt", *args)
    _assert_one_line_error(refused, str(bundle), "results.jsonl", "clips/", "--overwrite")
    assert _snapshot(out) == before  # nothing deleted, nothing replaced

    # moved out: what is left is edge-opt's own (manifest files, reports, signature, and on a
    # Jetson the trt_cache/ its manifest once pointed engines to), so it is replaced
    (bundle / "results.jsonl").unlink()
    os.rename(bundle / "clips", tmp_path / "clips")
    if target.startswith("jetson"):
        (bundle / "trt_cache").mkdir()
        (bundle / "trt_cache" / "x.engine").write_bytes(b"engine")
    again = run_cli("edge-opt", *args)
    assert again.returncode == 0, again.stderr
    assert (bundle / "manifest.json").is_file() and not (bundle / "trt_cache").exists()

    (bundle / "results.jsonl").write_text("mine\n")
    forced = run_cli("edge-opt", *args, "--overwrite")  # the user said so
    assert forced.returncode == 0, forced.stderr
    assert not (bundle / "results.jsonl").exists()


def test_refusal_names_a_few_of_many_user_files(tmp_path, tiny):
    out = tmp_path / "out"
    args = ["export", tiny, "-t", "x86-fp32", "--format", "onnx", "--runs", "2", "--out", out]
    assert run_cli("edge-opt", *args).returncode == 0
    for i in range(7):
        (out / "x86-fp32" / f"run{i}.csv").write_text("1\n")
    os.symlink(tmp_path, out / "x86-fp32" / "elsewhere")
    before = _snapshot(out)
    refused = run_cli("edge-opt", *args)
    _assert_one_line_error(refused, "elsewhere", "run0.csv", "and 5 more", "--overwrite")
    assert _snapshot(out) == before
