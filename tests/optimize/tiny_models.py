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
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
