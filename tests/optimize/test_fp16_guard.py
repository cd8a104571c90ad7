"""fp16 targets face the accuracy guard: fp16's range ends at 65504, and a model with large
activations came out of an fp16 export as NaN, was measured, reported and written anyway.

The overflowing model (tests/optimize/tiny_models.py) scales its logits by 1e6 and divides them
by their largest magnitude: exact in float32, NaN in fp16 math. onnxruntime's x86 CPU runs an
fp16 graph's arithmetic in float32, so an ONNX fp16 target is judged with its activations
rounded to float16, as TensorRT on a Jetson stores them (optimize/steps/fp16.py).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.steps import fp16
from tests.conftest import error_lines, run_cli
from tests.optimize.tiny_models import fp16_overflow_classifier, tiny_classifier


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    return {"overflow": fp16_overflow_classifier(d / "overflow.onnx"),
            "tiny": tiny_classifier(d / "tiny.onnx")}


def _export(model, out, data_dir, *targets_and_flags):
    return run_cli("edge-opt", "export", model, *targets_and_flags, "--eval",
                   data_dir / "eval", "--runs", "3", "-q", "--out", out)


def _guard(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["metrics"]["accuracy_guard"]


def test_an_overflowing_fp16_target_is_refused_and_the_other_target_written(
        models, data_dir, tmp_path):
    """jetson-fp16 (ONNX, fp16 math on the device) overflows; x86-fp16 (OpenVINO, pinned to
    f32) does not: the first is refused in one line with the way out, the second written."""
    out = tmp_path / "out"
    result = _export(models["overflow"], out, data_dir, "-t", "jetson-fp16", "-t", "x86-fp16")
    assert result.returncode == 1, result.stderr
    first, summary = error_lines(result.stderr)
    assert "Traceback" not in result.stderr
    for words in ("jetson-fp16 loses 100.0 points", "top-1 agree 0.000", "1-point budget",
                  "not written", "--max-drop 100.1", "--force"):
        assert words in first, first
    assert "--guard-tries" not in first  # there is nothing to search in fp16
    assert "wrote x86-fp16" in summary and "not written: jetson-fp16" in summary
    assert not (out / "jetson-fp16").exists()
    combined = json.loads((out / "report.json").read_text())
    assert list(combined["bundles"]) == ["x86-fp16"]
    assert list(combined["not_written"]) == ["jetson-fp16"]
    guard = _guard(out / "x86-fp16")
    assert guard["passed"] and guard["judged_only"] and not guard["searched"]
    assert guard["held_out"]["value"] == 1.0


@pytest.mark.parametrize("flags, passed", [(["--force"], False), (["--max-drop", "100"], True)])
def test_force_or_a_larger_budget_writes_the_overflowing_fp16_bundle(
        models, data_dir, tmp_path, flags, passed):
    out = tmp_path / "out"
    result = _export(models["overflow"], out, data_dir, "-t", "jetson-fp16", *flags)
    assert result.returncode == 0, result.stderr
    guard = _guard(out / "jetson-fp16")
    assert guard["passed"] is passed and guard["held_out"]["loss"] == 100.0
    assert guard["judged_only"] and guard["layers_tried"] == 0
    assert "float16" in guard["judged_as"]
    report = (out / "jetson-fp16" / "report.md").read_text()
    if passed:
        assert guard["budget"] == 100.0 and "passed" in report
    else:
        assert "jetson-fp16 is over its accuracy budget" in result.stdout
        assert "FAILED (written with --force)" in report


def test_an_fp16_export_that_is_fine_is_judged_and_written(models, data_dir, tmp_path):
    out = tmp_path / "out"
    result = _export(models["tiny"], out, data_dir, "-t", "jetson-fp16", "-t", "x86-fp16",
                     "--format", "onnx")
    assert result.returncode == 0, result.stderr
    for target in ("jetson-fp16", "x86-fp16"):
        guard = _guard(out / target)
        assert guard["passed"] and guard["judged_only"], guard
        assert guard["held_out"]["value"] >= 0.99 and guard["held_out"]["images"] >= 20
    assert "fp16 is judged, not searched" in (out / "jetson-fp16" / "report.md").read_text()


def test_fp16_is_not_judged_below_the_guards_image_count(models, data_dir, tmp_path):
    """As int8: under 20 held-out images one flip moves agreement by over 5 points."""
    evaluation = tmp_path / "few"
    evaluation.mkdir()
    for photo in sorted((data_dir / "eval").iterdir())[:5]:
        (evaluation / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    result = run_cli("edge-opt", "export", models["overflow"], "-t", "jetson-fp16", "--eval",
                     evaluation, "--runs", "3", "-q", "--out", out)
    assert result.returncode == 0, result.stderr
    assert _guard(out / "jetson-fp16") is None
    assert "Accuracy guard: not run" in (out / "report.md").read_text()


def test_emulation_rounds_what_onnxruntime_keeps_in_float32(tmp_path):
    """The premise: x * 1e5 / 1e5 in an fp16 graph stays finite on onnxruntime's CPU (it
    computes in float32), and the emulated copy overflows as fp16 math does."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"]),
             helper.make_node("Div", ["big", "k"], ["y"])]
    graph = helper.make_graph(
        nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array(300.0, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fp32.onnx")
    fp16.run(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", None)
    fp16.emulate(tmp_path / "fp16.onnx", tmp_path / "emulated.onnx")
    x = np.array([[0.5, 300.0]], np.float32)  # 150 fits fp16; 90000 does not

    def run(name):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    assert np.isfinite(run("fp16.onnx")).all()
    emulated = run("emulated.onnx")
    assert emulated[0, 0] == 0.5 and np.isinf(emulated[0, 1])
