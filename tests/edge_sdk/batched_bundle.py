"""The tiny detector bundle (tests/edge_sdk/test_pipeline.py) with a dynamic batch dimension.

The exported bundle is copied, its model's batch dimension made symbolic (the one constant
that does not broadcast over a batch, the class column, becomes score x 0), and the manifest
says `max_batch`, as `edge-opt export --batch` records it; hashes are recomputed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edge_sdk.hashing import sha256_file
from edge_sdk.sources import VideoFrame


def frame(index: int, source: str = "s") -> VideoFrame:
    """A 2x2 black frame from `source`, for the batcher's bookkeeping tests."""
    return VideoFrame(np.zeros((2, 2, 3), np.uint8), index, index / 10, time.perf_counter(),
                      source)


def batched_copy(bundle: Path, out: Path, max_batch: int = 4) -> Path:
    shutil.copytree(bundle, out)
    model = onnx.load(str(out / "model.onnx"))
    graph = model.graph
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    zero = helper.make_tensor("zero_f", onnx.TensorProto.FLOAT, [], [0.0])
    graph.initializer.append(zero)
    for i, node in enumerate(n for n in list(graph.node) if n.op_type == "Concat"
                             and len(n.input) == 3 and n.output[0].endswith("_row")):
        column = f"class_column_{i}"
        node.input[2] = column
        graph.node.insert(list(graph.node).index(node),
                          helper.make_node("Mul", [node.input[1], "zero_f"], [column]))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["runtime"]["max_batch"] = max_batch
    manifest["files"]["model"]["sha256"] = sha256_file(out / "model.onnx")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
