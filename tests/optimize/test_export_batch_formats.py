"""`edge-opt export --batch N` beyond ONNX: OpenVINO IR keeps the dynamic batch dimension and
TFLite is converted with an open one (one call on N frames gives each what it gets alone, fp32
and int8); the report and manifest carry images/s measured at batch 1 and at N."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edge_sdk
from edge_sdk.batcher import run_batch
from optimize.throughput import measure_throughput, throughput_text
from tests.conftest import DATA, ROOT, run_cli
from tests.optimize.tiny_models import tiny_classifier


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batchfmt")
    model = onnx.load(str(tiny_classifier(tmp / "fixed.onnx")))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(model, str(tmp / "dynamic.onnx"))
    return tmp, tmp / "dynamic.onnx"


@pytest.fixture(scope="module")
def openvino_export(dynamic):
    tmp, model = dynamic
    out = tmp / "ov"
    result = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "-t", "x86-int8",
                     "--format", "openvino", "--batch", "4", "--calib", DATA / "calib",
                     "--runs", "3", "-q", "--max-drop", "100", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


def frames():
    out = [np.full((40, 50, 3), v, np.uint8) for v in (10, 90, 170, 250)]
    out[1][::2] = 0
    out[3][:, ::3] = 40
    return out


@pytest.mark.parametrize("target", ["x86-fp32", "x86-int8"])
def test_an_openvino_bundle_runs_n_frames_in_one_call(openvino_export, target):
    import openvino as ov

    out, _ = openvino_export
    folder = out / target
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "openvino" and manifest["runtime"]["max_batch"] == 4
    assert manifest["inputs"][0]["shape"][0] == 1  # one frame's shape, as for ONNX
    assert ov.Core().read_model(str(folder / "model.xml")).inputs[0].get_partial_shape()[
        0].is_dynamic
    model = edge_sdk.load(folder, threads=1)
    images = frames()
    for size in (4, 3):  # a full batch and a partial one (a camera was late)
        batched = run_batch(model, images[:size], 4)
        assert [d.batch_size for d in batched] == [size] * size
        for d, frame in zip(batched, images):
            np.testing.assert_allclose(d.result.scores, model.predict(frame).scores, atol=1e-5)


def test_the_report_gives_images_per_second_at_batch_1_and_n(openvino_export):
    out, result = openvino_export
    for target in ("x86-fp32", "x86-int8"):
        t = json.loads((out / target / "manifest.json").read_text())["metrics"]["throughput"]
        assert t["batch"] == 4 and t["rounds"] >= 1
        assert t["batch1_images_per_s"] > 0 and t["batch_n_images_per_s"] > 0
        assert t["gain"] == pytest.approx(t["batch_n_images_per_s"] / t["batch1_images_per_s"])
        assert "## Throughput (--batch)" in (out / target / "report.md").read_text()
    combined = (out / "report.md").read_text()
    assert combined.count("images/s at batch 1") == 2 and "at batch 4" in combined
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["throughput"]["batch"] for r in rows if r.get("throughput")] == [4, 4]
    assert "images/s at batch 1" in result.stdout  # said on the terminal too


def test_a_batch_1_export_measures_no_throughput(dynamic):
    tmp, model = dynamic
    out = tmp / "one"
    result = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "--format", "openvino",
                     "--runs", "3", "-q", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "throughput" not in json.loads((out / "x86-fp32" / "manifest.json").read_text())[
        "metrics"]
    assert "images/s" not in (out / "report.md").read_text()
    assert measure_throughput(out / "x86-fp32", 1, 1) is None


@pytest.mark.parametrize("target", ["rpi5-fp32", "rpi5-int8"])
def test_a_tflite_bundle_runs_n_frames_in_one_call(dynamic, target):
    """litert-torch converts with the batch dimension open (1..N); LiteRT resizes the input
    to each call's frames, so a partial batch (a late camera) costs no padding."""
    from ai_edge_litert.interpreter import Interpreter

    tmp, model = dynamic
    out = tmp / f"tfl-{target}"
    result = run_cli("edge-opt", "export", model, "-t", target, "--batch", "4", "--calib",
                     DATA / "calib", "--runs", "3", "-q", "--max-drop", "100",
                     "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = out / target
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "tflite" and manifest["runtime"]["max_batch"] == 4
    assert manifest["inputs"][0]["shape"][0] == 1
    signature = Interpreter(str(folder / "model.tflite")).get_input_details()[0][
        "shape_signature"]
    assert signature[0] == -1
    assert manifest["metrics"]["throughput"]["batch"] == 4
    model = edge_sdk.load(folder, threads=1)
    images = frames()
    for size in (4, 3, 4, 1):  # the input is resized back and forth
        batched = run_batch(model, images[:size], 4)
        assert [d.batch_size for d in batched] == [size] * size
        for d, frame in zip(batched, images):
            np.testing.assert_allclose(d.result.scores, model.predict(frame).scores, atol=1e-5)


def test_a_model_litert_cannot_batch_is_refused_in_one_line(tmp_path):
    """YOLO11n's attention (a batched MatMul) does not lower to TFLite with an open batch."""
    model = ROOT / "examples" / "models" / "yolo11n_person.onnx"
    result = run_cli("edge-opt", "export", model, "-t", "rpi5-fp32", "--batch", "2", "--runs",
                     "3", "-q", "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode != 0
    assert "cannot keep this model's batch dimension open (--batch 2" in result.stderr, (
        result.stderr)
    assert "--format onnx or openvino" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()


def test_the_throughput_line_says_whether_a_batch_pays():
    base = {"batch": 8, "threads": 2, "rounds": 3, "batch1_images_per_s": 20.0}
    pays = throughput_text("x", {**base, "batch_n_images_per_s": 40.0, "gain": 2.0})
    flat = throughput_text("x", {**base, "batch_n_images_per_s": 19.0, "gain": 0.95})
    assert "20.0 images/s at batch 1, 40.0 at batch 8 (2.00x" in pays and "pays" in pays
    assert "gains nothing per image" in flat and "concurrent" in flat
