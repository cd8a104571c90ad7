"""A model fed the wrong input range sees near-uniform frames and answers alike for every
image; int8 copies that faithfully, so the guard passes. Export warns, naming the
preprocessing flags, and says nothing when the range is right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_sdk.manifest import InputSpec
from optimize.flat_outputs import flat_outputs_warning
from tests.conftest import run_cli
from tests.optimize.tiny_models import scaled_classifier, tiny_classifier


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> Path:
    return scaled_classifier(tmp_path_factory.mktemp("model") / "scaled.onnx")


def _export(model: Path, data_dir: Path, out: Path, *flags: str):
    result = run_cli("edge-opt", "export", model, "-t", "x86-int8", "--format", "onnx",
                     "--calib", data_dir / "calib", "--eval", data_dir / "eval", "--runs", "2",
                     "--out", out, *flags)
    assert result.returncode == 0, result.stderr
    return result, [line for line in result.stdout.splitlines()
                    if line.startswith("warning: ") and "hardly change" in line]


def test_model_fed_the_wrong_range_is_written_with_a_warning_naming_the_flags(
        tmp_path, scaled, data_dir):
    result, warnings = _export(scaled, data_dir, tmp_path / "out")
    assert len(warnings) == 1, result.stdout
    assert "given 0..1, RGB (--mean 0 --std 255)" in warnings[0]
    assert "--mean 0 --std 1" in warnings[0] and "--color" in warnings[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "x86-int8" / "manifest.json").is_file()  # a warning, not a refusal


def test_right_range_and_real_classifier_say_nothing(tmp_path, scaled, data_dir):
    result, warnings = _export(scaled, data_dir, tmp_path / "scaled", "--mean", "0", "--std", "1")
    assert warnings == [] and "hardly change" not in result.stderr
    tiny = tiny_classifier(tmp_path / "tiny.onnx")
    result, warnings = _export(tiny, data_dir, tmp_path / "tiny")
    assert warnings == [] and "hardly change" not in result.stderr


def test_alike_images_are_not_blamed_on_the_model():
    """Outputs that do not vary because the images do not: nothing to say about the flags."""
    spec = InputSpec(name="input", shape=(1, 3, 4, 4))
    frame = np.full((1, 3, 4, 4), 0.5, np.float32)
    same = [[np.ones((1, 4), np.float32)] for _ in range(5)]
    assert flat_outputs_warning([frame] * 5, same, spec) is None
    varied = [frame * k for k in range(1, 6)]
    assert flat_outputs_warning(varied, same, spec) is not None
    assert flat_outputs_warning(varied[:2], same[:2], spec) is None  # too few to tell
