"""OpenVINO IR targets (the x86 default) on the real EfficientNet-Lite0, run through edge_sdk."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge_sdk
from optimize.calibration import load_images
from optimize.measure import model_outputs
from tests.conftest import DATA, EFFNET, EFFNET_FLAGS, run_cli


@pytest.fixture(scope="session")
def ov_bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino")
    result = run_cli("edge-opt", "export", EFFNET, *EFFNET_FLAGS, "-t", "x86-fp32",
                     "-t", "x86-fp16", "-t", "x86-int8", "-t", "x86-int4", "--max-drop", "100",
                     "--calib", DATA / "calib", "--eval", DATA / "eval", "--runs", "5",
                     "--format", "openvino", "--out", out)  # pinned: no auto for x86-int8
    assert result.returncode == 0, result.stderr
    return out


def _xml(bundle) -> str:
    return (bundle / "model.xml").read_text()


def test_bundles_are_openvino_ir_pinned_to_f32(ov_bundles):
    for target in ("x86-fp32", "x86-fp16", "x86-int8", "x86-int4"):
        manifest = json.loads((ov_bundles / target / "manifest.json").read_text())
        assert manifest["format"] == "openvino"
        assert set(manifest["files"]) == {"model", "weights", "labels"}
        assert manifest["runtime"]["backend"] == "openvino"
        assert manifest["runtime"]["options"]["INFERENCE_PRECISION_HINT"] == "f32"
        model = edge_sdk.load(ov_bundles / target)
        assert "openvino" in model.backend.name and "f32" in model.backend.name


def test_weights_are_stored_at_the_precision_asked(ov_bundles):
    assert 'element_type="f16"' not in _xml(ov_bundles / "x86-fp32")
    assert 'element_type="f16"' in _xml(ov_bundles / "x86-fp16")
    int8 = _xml(ov_bundles / "x86-int8")
    assert 'element_type="i8"' in int8 and ("FakeQuantize" in int8 or "u8" in int8)
    assert 'element_type="i4"' in _xml(ov_bundles / "x86-int4")


# Same held-out images and reasoning as the ONNX thresholds; bars sit under the measured
# values (fp32 1.0 / diff 1e-5, fp16 1.0 / 0.05, int8 0.935-0.964 / 1.2, int4 0.899-0.941 /
# 1.14). 168 images: one image moves agreement by 0.006, and a preprocessing change that
# moves pixels by under one grey level moved int4 by 4 images (0.923 -> 0.899), so the
# int4 bar sits 3 images under its lowest measured value.
PARITY = [("x86-fp32", 1.0, 1e-3), ("x86-fp16", 0.98, 0.1), ("x86-int8", 0.9, 3.0),
          ("x86-int4", 0.88, 2.0)]


@pytest.mark.parametrize(("target", "min_agreement", "max_diff"), PARITY)
def test_parity_with_onnx_fp32(ov_bundles, effnet_bundles, target, min_agreement, max_diff):
    reference = edge_sdk.load(effnet_bundles / "x86-fp32")  # the ONNX FP32 model
    model = edge_sdk.load(ov_bundles / target)
    images = load_images(DATA / "eval", model.input_spec, "evaluation")
    ref, out = model_outputs(reference, images), model_outputs(model, images)
    assert np.mean(ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)) \
        >= min_agreement
    assert np.max(np.abs(ref - out)) <= max_diff
    assert model.predict(DATA / "eval" / "baboon.jpg").labels[0] == "baboon"


def test_int8_quantizes_with_onnxruntime_where_openvino_fuses(ov_bundles):
    record = json.loads((ov_bundles / "x86-int8" / "manifest.json").read_text())["quantization"]
    assert record["scheme"] == "openvino-qdq" and record["calibration_images"] == 24
    assert record["tool"].endswith("(scheme ort-u8s8+openvino-qdq) -> openvino.convert_model")
    assert record["activations"] == "int8" and record["symmetric_activations"]
    assert record["float_op_types"] == ["Mul", "Sigmoid"]


def test_int4_records_what_stays_int8(ov_bundles):
    record = json.loads((ov_bundles / "x86-int4" / "manifest.json").read_text())["quantization"]
    assert record["mode"] == "int4_sym" and "Convolution" in record["int8_weights"]


def test_nncf_scheme_can_be_chosen(tmp_path):
    out = tmp_path / "nncf"
    result = run_cli("edge-opt", "export", EFFNET, *EFFNET_FLAGS, "-t", "x86-int8",
                     "--scheme", "nncf-int8", "--max-drop", "100", "--calib", DATA / "calib",
                     "--runs", "3",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "x86-int8" / "manifest.json").read_text())
    assert manifest["quantization"]["tool"].startswith("nncf.quantize")
    assert edge_sdk.load(out / "x86-int8").predict(DATA / "eval" / "baboon.jpg").labels


def test_jetson_bundle_says_how_to_run_tensorrt(effnet_bundles):
    manifest = json.loads((effnet_bundles / "jetson-int8" / "manifest.json").read_text())
    trt = manifest["runtime"]["options"]["tensorrt"]
    assert trt["trtexec"].startswith("trtexec --onnx=model.onnx --int8")
    assert "trtexec" in (effnet_bundles / "jetson-int8" / "report.md").read_text()
