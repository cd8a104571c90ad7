"""int8 bias correction (optimize/bias_correction.py) and the calibration methods' ranges.

The exactness check runs a small conv/depthwise/Gemm model with random weights (only shapes
matter to it) on real photos; the effect check runs EfficientNet-Lite0 with its real weights.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from device_profiles import load_schemes
from edge_sdk.manifest import InputSpec
from optimize.bias_correction import correct, input_means
from optimize.calibration import load_images
from optimize.steps import StepContext, run_step
from tests.optimize.tiny_models import depthwise_classifier

SCHEME = {"name": "ort-u8s8", **load_schemes()["ort-u8s8"]}
SPEC = InputSpec("input", (1, 3, 32, 32))


def _dequantized_weights(qdq_path) -> dict[str, np.ndarray]:
    """Layer name -> weights as the ort-u8s8 model stores them (int8 x per-channel scale)."""
    graph = onnx.load(str(qdq_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    weights = {}
    for node in graph.node:
        dq = producer.get(node.input[1]) if node.op_type in ("Conv", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            q, scale = inits[dq.input[0]], inits[dq.input[1]]
            assert not inits[dq.input[2]].any()  # symmetric weights: zero points are 0
            weights[node.name] = q.astype(np.float32) * scale.reshape(-1, *[1] * (q.ndim - 1))
    return weights


def _stem_mean(model_path, images, weight=None) -> np.ndarray:
    """Per-channel mean over the images of the first conv's output, optionally with other
    weights (the conv's bias as the model has it)."""
    model = onnx.load(str(model_path))
    stem = next(n for n in model.graph.node if n.name == "stem")
    if weight is not None:
        init = next(t for t in model.graph.initializer if t.name == stem.input[1])
        init.CopyFrom(numpy_helper.from_array(weight.astype(np.float32), init.name))
    model.graph.output.append(onnx.helper.make_tensor_value_info(stem.output[0],
                                                                 onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.mean([session.run([stem.output[0]], {"input": t})[0].mean(axis=(0, 2, 3))
                    for t in images.tensors], axis=0)


def test_corrected_bias_gives_back_the_mean_the_rounded_weights_moved(tmp_path, data_dir):
    model = depthwise_classifier(tmp_path / "model.onnx")
    images = load_images(data_dir / "calib", SPEC)
    qdq = tmp_path / "int8.onnx"
    run_step("int8", model, qdq, StepContext("input", SCHEME, images, compact=False,
                                             bias_correction=False))
    rounded = _dequantized_weights(qdq)
    assert set(rounded) == {"stem", "depthwise", "fc"}

    fixed = tmp_path / "corrected.onnx"
    record = correct(model, qdq, input_means(model, images, "input"), fixed)
    assert record["layers"] == 3 and record["largest_shift"] > 0

    float_mean = _stem_mean(model, images)
    moved = _stem_mean(model, images, rounded["stem"])  # rounded weights, old bias
    given_back = _stem_mean(fixed, images, rounded["stem"])  # rounded weights, corrected bias
    assert np.abs(moved - float_mean).max() > 1e-4  # rounding did move the mean...
    np.testing.assert_allclose(given_back, float_mean, atol=1e-5)  # ...and the bias undoes it
    for name in ("w1", "w2", "fc_w"):  # the correction touches biases only
        before = {t.name: t for t in onnx.load(str(model)).graph.initializer}[name]
        after = {t.name: t for t in onnx.load(str(fixed)).graph.initializer}[name]
        assert before == after


def test_bias_correction_cuts_efficientnet_int8_output_error(effnet_bundles, tmp_path, data_dir):
    """Real weights: the correction is on by default and shrinks the int8 model's error."""
    fp32 = effnet_bundles / "x86-fp32" / "model.onnx"
    spec = InputSpec.from_dict(json.loads((effnet_bundles / "x86-fp32" / "manifest.json")
                                          .read_text())["inputs"][0])
    calib = load_images(data_dir / "calib", spec)
    evals = load_images(data_dir / "eval", spec, "evaluation")
    cache: dict = {}

    def error(bias_correction: bool) -> tuple[float, dict]:
        dst = tmp_path / f"int8-{bias_correction}.onnx"
        record = run_step("int8", fp32, dst, StepContext("input", SCHEME, calib, cache=cache,
                                                         bias_correction=bias_correction))
        return float(np.abs(_outputs(dst, evals) - _outputs(fp32, evals)).mean()), record

    plain, plain_record = error(False)
    corrected, record = error(True)
    assert plain_record["bias_correction"] is None
    assert record["bias_correction"]["layers"] == 50  # 49 convs and the classifier
    assert corrected < 0.75 * plain, (corrected, plain)  # measured: 0.070 vs 0.125
    shipped = json.loads((effnet_bundles / "x86-int8" / "manifest.json").read_text())
    assert shipped["quantization"]["bias_correction"]["layers"] == 50  # the default


def _outputs(path, images) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"input": t})[0] for t in images.tensors])


def _activation_scales(path) -> dict[str, float]:
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.mark.parametrize(("method", "narrower"), [("entropy", 0.99), ("percentile", 0.9999)])
def test_each_calibration_method_chooses_its_own_ranges(tmp_path, data_dir, method, narrower):
    """onnxruntime's quantize_static builds the entropy histogram with as many bins as it
    quantizes to, which gives min-max ranges; edge-opt's calibration must not."""
    model = depthwise_classifier(tmp_path / "model.onnx")
    images = load_images(data_dir / "calib", SPEC)
    scales = {}
    for m in ("minmax", method):
        dst = tmp_path / f"{m}.onnx"
        record = run_step("int8", model, dst, StepContext("input", SCHEME, images,
                                                          calibration_method=m, compact=False))
        assert record["method"] == m
        scales[m] = _activation_scales(dst)
    assert scales["minmax"].keys() == scales[method].keys()
    tighter = [t for t in scales["minmax"]
               if scales[method][t] < narrower * scales["minmax"][t]]
    assert tighter, scales  # clipping outliers makes ranges narrower (99.999th percentile:
    # a few values of these ~50k per tensor, so only just)
