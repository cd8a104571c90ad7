"""Accuracy figures measured on calibration images are not from unseen images: when --eval and
--calib overlap (the same folder, one inside the other, or copies of the same files) export
warns and its report says so instead of "held-out images ... not used for calibration"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.optimize.tiny_models import tiny_classifier

CLAIM = "not used for calibration"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _export(tiny: Path, calib: Path, evaluation: Path, out: Path):
    result = run_cli("edge-opt", "export", tiny, "-t", "x86-int8", "--format", "onnx",
                     "--calib", calib, "--eval", evaluation, "--runs", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    return result, (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


def _overlap(data: dict) -> int:
    return data["eval_images_in_calibration"] + data["guard_search_images_in_calibration"]


def test_same_folder_for_eval_and_calib_is_not_reported_as_held_out(tmp_path, tiny, data_dir):
    calib = data_dir / "calib"
    result, md, data = _export(tiny, calib, calib, tmp_path / "out")
    n = len(list(calib.glob("*.jpg")))
    warnings = [line for line in result.stdout.splitlines()
                if line.startswith("warning: ") and "also calibration" in line]
    assert len(warnings) == 1, result.stdout
    assert f"{n} of the {n} evaluation images" in warnings[0] and "--eval" in warnings[0]
    assert CLAIM not in md and CLAIM not in result.stdout
    assert "all of them also calibration images" in md
    assert _overlap(data) == n == data["calibration_images"]


def test_eval_holding_calibration_images_is_counted(tmp_path, tiny, data_dir):
    evaluation = tmp_path / "eval"
    shutil.copytree(data_dir / "eval", evaluation)
    photos = sorted((data_dir / "calib").glob("*.jpg"))
    # calibration folder inside the evaluation folder
    shutil.copytree(data_dir / "calib", evaluation / "calib")
    result, md, data = _export(tiny, evaluation / "calib", evaluation, tmp_path / "nested")
    assert f"{len(photos)} of the " in result.stdout and CLAIM not in md
    assert _overlap(data) == len(photos)

    # five calibration photos copied under other names into a separate evaluation folder
    shutil.rmtree(evaluation / "calib")
    for i, photo in enumerate(photos[:5]):
        shutil.copyfile(photo, evaluation / f"copy_{i}.jpg")
    result, md, data = _export(tiny, data_dir / "calib", evaluation, tmp_path / "copies")
    assert "warning: 5 of the " in result.stdout and CLAIM not in md
    assert _overlap(data) == 5

    # apart: the claim stands and nothing is said
    result, md, data = _export(tiny, data_dir / "calib", data_dir / "eval", tmp_path / "apart")
    assert CLAIM in md and "also calibration" not in result.stdout + md
    assert _overlap(data) == 0


def test_export_without_guarded_target_scores_every_eval_image(tmp_path, tiny, data_dir):
    """An fp32-only export has no accuracy guard: its report named a guard search over half of
    --eval that never ran, and scored only the other half."""
    result = run_cli("edge-opt", "export", tiny, "-t", "x86-fp32", "--format", "onnx",
                     "--eval", data_dir / "eval", "--runs", "2", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    n = len(list((data_dir / "eval").rglob("*.jpg")))
    assert "guard's search" not in md and "guard's search" not in result.stdout
    assert f"on {n} held-out images" in md, md
    assert (data["eval_images"], data["guard_search_images"]) == (n, 0)
