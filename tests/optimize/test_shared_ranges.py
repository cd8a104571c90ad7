"""One range for the tensors a Concat joins, and no requantization after Concat/Split/MaxPool
(optimize/shared_ranges.py), on a CSP-style block with random weights (only the graph's
shape matters here) calibrated on real photos. The real model's executed graph is checked in
test_real_detector.py (YOLO11n on OpenVINO)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from device_profiles import load_schemes, qdq_scheme
from edge_sdk.manifest import InputSpec
from optimize.calibration import OrtCalibrationReader, load_images
from optimize.shared_ranges import drop_requantization, share_concat_ranges
from optimize.steps import StepContext, run_step
from tests.optimize.tiny_models import split_concat_block

SPEC = InputSpec("input", (1, 3, 32, 32))
OPENVINO_QDQ = qdq_scheme({"name": "openvino-qdq", **load_schemes()["openvino-qdq"]})


@pytest.fixture(scope="module")
def block(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("block")
    return {"model": split_concat_block(tmp / "block.onnx"), "tmp": tmp,
            "calib": load_images(data_dir / "calib", SPEC),
            "eval": load_images(data_dir / "eval", SPEC)}


def _nodes(path):
    graph = onnx.load(str(path)).graph
    return graph, {o: n for n in graph.node for o in n.output}


def _scale(graph, dq) -> float:
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return float(inits[dq.input[1]])


def test_openvino_int8_concatenates_int8_data_on_one_scale(block):
    dst = block["tmp"] / "ov-qdq.onnx"
    record = run_step("int8", block["model"], dst, StepContext(
        "input", OPENVINO_QDQ, block["calib"], compact=False, bias_correction=False))
    assert record["concat_shared_ranges"] > 0 and record["requantizations_removed"] >= 3
    graph, producer = _nodes(dst)
    rearranging = {o for n in graph.node if n.op_type in ("Concat", "Split", "MaxPool")
                   for o in n.output}
    assert not [n.name for n in graph.node if n.op_type == "QuantizeLinear"
                and n.input[0] in rearranging]
    # every Concat input traces back (through Split / MaxPool) to a DQ of one scale
    concat = next(n for n in graph.node if n.op_type == "Concat")
    scales = set()
    for name in concat.input:
        node = producer[name]
        while node.op_type in ("Split", "MaxPool"):
            node = producer[node.input[0]]
        assert node.op_type == "DequantizeLinear", node
        scales.add(_scale(graph, node))
    assert len(scales) == 1
    # and the Conv after the Concat reads it with that scale, without a pair of its own
    conv = next(n for n in graph.node if concat.output[0] in n.input)
    assert conv.op_type == "Conv"


def test_the_removed_pairs_rounded_nothing(block):
    """Quantized by onnxruntime on the shared ranges, with and without the pairs after
    Concat/Split/MaxPool: the same outputs on real photos (a pair with its input's own scale
    is an identity on values already on that grid)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    tmp, model = block["tmp"], block["model"]
    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / "aug.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(OrtCalibrationReader(block["calib"], "input"))
    save_tensors_data(calibrator.compute_data(), tmp / "ranges.json")
    changed = share_concat_ranges(onnx.load(str(model)).graph, tmp / "ranges.json",
                                  tmp / "shared.json", set())
    assert changed >= 2  # the Concat's inputs had ranges of their own
    with_pairs, without = tmp / "with.onnx", tmp / "without.onnx"
    quantize_static(str(model), str(with_pairs), None,
                    calibration_cache_path=str(tmp / "shared.json"),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True})
    without.write_bytes(with_pairs.read_bytes())
    assert drop_requantization(without) >= 3
    assert drop_requantization(without) == 0  # nothing left to drop

    def outputs(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": t})[0]
                               for t in block["eval"].tensors])

    np.testing.assert_allclose(outputs(without), outputs(with_pairs), rtol=0, atol=1e-5)


def test_pairs_with_another_scale_stay(block):
    """Without shared ranges the Concat's inputs keep their own scales: the pairs there do
    requantize, so none is dropped."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    dst = block["tmp"] / "own-scales.onnx"
    quantize_static(str(block["model"]), str(dst),
                    OrtCalibrationReader(block["calib"], "input"),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True})
    graph, _ = _nodes(dst)
    before = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    drop_requantization(dst)
    graph, producer = _nodes(dst)
    concat = next(n for n in graph.node if n.op_type == "Concat")
    after_concat = [n for n in graph.node if n.op_type == "QuantizeLinear"
                    and n.input[0] == concat.output[0]]
    assert after_concat and sum(n.op_type == "QuantizeLinear" for n in graph.node) <= before
