"""Tiny ONNX models written with onnx.helper, for tests where only shapes matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_classifier(path: Path, hw: int = 32, classes: int = 4, with_gemm: bool = True) -> Path:
    """Conv(3->8, 3x3) -> Relu -> GlobalAveragePool -> Flatten [-> Gemm(8->classes)]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f" if with_gemm else "output"])]
    out_dim = 8
    if with_gemm:
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(np.float32),
                                          "fc_w"),
                  numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
        nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], transB=1))
        out_dim = classes
    return save_model(path, "tiny", nodes, inits, hw, out_dim)


def depthwise_classifier(path: Path, hw: int = 32, classes: int = 4) -> Path:
    """Conv(3->8, 3x3, stride 2) -> Relu -> depthwise Conv(8, 3x3) -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm(8->classes, transB): the layer kinds bias correction handles."""
    rng = np.random.default_rng(1)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("w2", 8, 1, 3, 3),
             init("b2", 8, scale=0.1), init("fc_w", classes, 8), init("fc_b", classes)]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="stem", strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="depthwise", group=8,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], name="fc", transB=1)]
    return save_model(path, "depthwise", nodes, inits, hw, classes)


def scaled_classifier(path: Path, hw: int = 32, classes: int = 4) -> Path:
    """x / 127.5 - 1 inside the graph, as SSDLite's frozen graph does (it expects pixels
    0..255), then the tiny classifier's Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm:
    fed pixels / 255 it sees an almost uniform -1 and answers alike for every image."""
    rng = np.random.default_rng(3)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale"),
             numpy_helper.from_array(np.array(-1, np.float32), "shift"),
             init("w", 8, 3, 3, 3), init("b", 8, scale=0.1), init("fc_w", classes, 8),
             init("fc_b", classes)]
    nodes = [helper.make_node("Mul", ["input", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "shift"], ["centred"]),
             helper.make_node("Conv", ["centred", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], transB=1)]
    return save_model(path, "scaled", nodes, inits, hw, classes)


def save_model(path: Path, name: str, nodes: list, inits: list, hw: int, out_dim: int) -> Path:
    """A checked opset-17 model with input "input" (1x3xHWxHW) and output "output" (1xOUT)."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def split_concat_block(path: Path, hw: int = 32, classes: int = 4) -> Path:
    """A CSP-style block like YOLO's C3k2 and SPPF: Conv(3->8) -> Relu -> Split(4, 4); one half
    through Conv(4->4) -> Relu, the other through MaxPool; Concat(half, conv, pool) ->
    Conv(12->8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->classes)."""
    rng = np.random.default_rng(2)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("w2", 4, 4, 3, 3),
             init("b2", 4, scale=0.1), init("w3", 8, 12, 1, 1), init("b3", 8, scale=0.1),
             init("fc_w", classes, 8), init("fc_b", classes),
             numpy_helper.from_array(np.array([4, 4], np.int64), "halves")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Split", ["r1", "halves"], ["a", "b"], axis=1),
             helper.make_node("Conv", ["b", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "r2", "m"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"]),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], transB=1)]
    for n, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{n}"
    return save_model(path, "split_concat", nodes, inits, hw, classes)


def fp16_overflow_classifier(path: Path, hw: int = 32, classes: int = 4) -> Path:
    """tiny_classifier's layers, then its logits x 1e6 (two Muls by 1000) divided by their
    largest magnitude: the same top-1 in float32, but every scaled logit is over float16's
    65504, so in fp16 math they are inf and the outputs inf / inf = NaN (onnxruntime's x86 CPU
    computes in float32 and never overflows: optimize/steps/fp16.py). Class 0's bias keeps it
    last in float32, so NaN outputs (argmax 0) never agree with FP32's top-1."""
    rng = np.random.default_rng(0)
    bias = np.full(classes, 1.0, np.float32)
    bias[0] = -2.0
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(np.float32),
                                     "fc_w"),
             numpy_helper.from_array(bias, "fc_b"),
             numpy_helper.from_array(np.array(1000.0, np.float32), "thousand")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
             helper.make_node("Mul", ["logits", "thousand"], ["big"]),
             helper.make_node("Mul", ["big", "thousand"], ["huge"]),
             helper.make_node("Abs", ["huge"], ["magnitude"]),
             helper.make_node("ReduceMax", ["magnitude"], ["largest"], axes=[1], keepdims=1),
             helper.make_node("Div", ["huge", "largest"], ["output"])]
    return save_model(path, "fp16_overflow", nodes, inits, hw, classes)
