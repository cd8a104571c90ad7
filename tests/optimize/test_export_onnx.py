"""End-to-end ONNX export of the real EfficientNet-Lite0: graphs, accuracy, bundle, report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edge_sdk
from optimize.calibration import list_images, load_images
from optimize.measure import model_outputs


def _graph(bundle):
    return onnx.load(str(bundle / "model.onnx"))


def _zero_points(model) -> list[np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def test_jetson_int8_is_tensorrt_explicit_quantization(effnet_bundles):
    model = _graph(effnet_bundles / "jetson-int8")
    zps = _zero_points(model)
    assert zps, "no Q/DQ nodes found"
    assert all(z.dtype == np.int8 for z in zps), "TensorRT needs int8 (not uint8) Q/DQ"
    assert all(np.all(z == 0) for z in zps), "TensorRT needs every zero point to be 0"
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        # no int32 bias DequantizeLinear: TensorRT's parser rejects it
        src = inits.get(node.input[0])
        assert src is None or src.data_type != onnx.TensorProto.INT32
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        # weights arrive as float initializer -> QuantizeLinear -> DequantizeLinear
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q = producers[dq.input[0]]
        assert q.op_type == "QuantizeLinear"
        assert inits[q.input[0]].data_type == onnx.TensorProto.FLOAT
        if len(conv.input) > 2:  # bias stays float, straight from an initializer
            assert inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT


def test_x86_int8_uses_uint8_activations_and_int8_weights(effnet_bundles):
    model = _graph(effnet_bundles / "x86-int8")
    inits = {t.name: t for t in model.graph.initializer}
    act_types, weight_types = set(), set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            act_types.add(numpy_helper.to_array(inits[node.input[2]]).dtype)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weight_types.add(numpy_helper.to_array(inits[node.input[0]]).dtype)
    assert act_types == {np.dtype(np.uint8)}
    assert np.dtype(np.int8) in weight_types


def test_fp16_keeps_float32_io_and_halves_the_weights(effnet_bundles):
    model = _graph(effnet_bundles / "x86-fp16")
    io = list(model.graph.input) + list(model.graph.output)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)
    big = [t for t in model.graph.initializer if np.prod(t.dims) > 1000]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)


def test_int4_compresses_matmul_weights_to_4_bit(effnet_bundles):
    model = _graph(effnet_bundles / "x86-int4")
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" in ops
    manifest = json.loads((effnet_bundles / "x86-int4" / "manifest.json").read_text())
    assert manifest["quantization"]["kept_float"].get("Conv", 0) > 0


# Thresholds, on the held-out images of examples/data/eval (83 photos, 17 of them with 5 views
# each; none used for calibration). fp16 keeps ~3 significant digits: logits of magnitude < 20
# move by < 0.1 and the top-1 class flips only where FP32's top two are nearly tied. int8 and
# int4 are lossy: their bars sit just under what this export measured (see benchmarks/results)
# so a regression fails.
ACCURACY = [
    ("x86-fp32", 1.0, 1e-4),
    ("x86-fp16", 0.98, 0.1),
    ("x86-int8", 0.93, 3.0),  # measured 0.951, max diff 1.11 (with bias correction)
    ("jetson-int8", 0.85, 3.5),  # measured 0.922, max diff 1.98 (symmetric int8 activations)
    ("x86-int4", 0.95, 1.0),  # measured 0.980, max diff 0.45
]


@pytest.mark.parametrize(("target", "min_agreement", "max_diff"), ACCURACY)
def test_outputs_stay_close_to_fp32(effnet_bundles, data_dir, target, min_agreement, max_diff):
    reference = edge_sdk.load(effnet_bundles / "x86-fp32")
    model = edge_sdk.load(effnet_bundles / target)
    images = load_images(data_dir / "eval", model.input_spec, "evaluation")
    ref, out = model_outputs(reference, images), model_outputs(model, images)
    agreement = np.mean(ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1))
    assert agreement >= min_agreement
    assert np.max(np.abs(ref - out)) <= max_diff


def test_sizes_shrink_as_the_precision_drops(effnet_bundles):
    size = {t: (effnet_bundles / t / "model.onnx").stat().st_size
            for t in ("x86-fp32", "x86-fp16", "x86-int8", "x86-int4")}
    assert size["x86-fp16"] <= 0.52 * size["x86-fp32"]
    assert size["x86-int8"] <= 0.28 * size["x86-fp32"]
    assert size["x86-int4"] < size["x86-fp32"]


@pytest.mark.parametrize("target", ["x86-fp32", "x86-int8", "jetson-int8"])
def test_predict_returns_top_k_labels(effnet_bundles, data_dir, target):
    model = edge_sdk.load(effnet_bundles / target)
    result = model.predict(data_dir / "eval" / "baboon.jpg")
    assert isinstance(result, edge_sdk.Classification)
    assert result.labels[0] == "baboon"
    assert len(result.class_ids) == 5 and np.all(np.diff(result.scores) <= 0)


def test_manifest_records_what_a_device_needs(effnet_bundles):
    manifest = json.loads((effnet_bundles / "jetson-int8" / "manifest.json").read_text())
    assert manifest["target"] == "jetson-orin-nano-int8"
    assert manifest["runtime"]["providers"][0] == "TensorrtExecutionProvider"
    trt = manifest["runtime"]["provider_options"]["TensorrtExecutionProvider"]
    assert trt["trt_int8_enable"] is True
    spec = manifest["inputs"][0]
    assert (spec["resize"], spec["color"], spec["mean"], spec["std"]) == (
        "center-crop", "RGB", [127.0] * 3, [128.0] * 3)
    assert manifest["quantization"]["scheme"] == "tensorrt"
    assert manifest["quantization"]["calibration_images"] == 24
    assert manifest["source"]["kind"] == "pytorch"
    assert manifest["source"]["export_max_abs_diff"] < 1e-3
    assert manifest["files"]["model"]["sha256"]
    assert manifest["metrics"]["fidelity"]["metric"] == "top-1 agreement with FP32"
    assert manifest["calibration_stats"]["brightness"]["fractions"]


def test_reports_cover_every_target(effnet_bundles, data_dir):
    data = json.loads((effnet_bundles / "report.json").read_text())
    names = [r["target"] for r in data["rows"]]
    assert names == ["fp32 (source)", "x86-fp32", "x86-fp16", "x86-int8", "jetson-int8",
                     "x86-int4"]
    for row in data["rows"]:
        assert row["size_bytes"] > 0 and row["latency_ms_p50"] > 0
        assert row["latency_ms_p95"] >= row["latency_ms_p50"]
    # the held-out photos split in two: the guard searches on one part, reports the other
    held_out = list_images(data_dir / "eval", "evaluation")
    assert data["eval_images"] + data["guard_search_images"] == len(held_out)
    assert data["eval_images"] >= 40 and data["guard_search_images"] >= 40
    for target in ("x86-int8", "jetson-int8"):
        assert "top-1 agree" in (effnet_bundles / target / "report.md").read_text()
