"""Ops int8 cannot hold, found by graph analysis: a detector head's tail, and attention.

**The head tail**: the ops between a model's last weighted layers and its outputs.

Detector heads end in arithmetic that int8 cannot hold: box decoding (distribution-focal-loss
integrals, anchor offsets and strides in pixels), sigmoid/softmax of scores, and concats that
put coordinates in the hundreds next to scores in 0..1, so one int8 range rounds every score
to zero. These ops are cheap in float and carry no weights worth quantizing, so int8 keeps
them float and quantizes the body (Ultralytics' exporters and the usual NNCF "ignored scope"
recipes do the same by hand).

The walk starts at each graph output and goes backwards through every op until it reaches a
layer with constant weights (Conv, ConvTranspose, Gemm, MatMul): that layer and what feeds it
are the body. One weighted layer belongs to the tail: a convolution fed by a softmax (the DFL
integral of YOLOv8/v11, whose fixed weights 0..reg_max compute an expectation).

**Attention**: a MatMul of two activations (queries x keys, weights x values) and its Softmax.
Both operands carry the quantization error of everything before them, the product squares it,
and the softmax turns an error in its logits into a bias of every weight: on YOLO11n's single
C2PSA block, int8 attention moved the person score's logit by -0.9 on average (half the
detections fell under the threshold); keeping those three ops float brought it to -0.24,
at the cost of three small float ops. Weighted MatMuls (linear layers) are not attention.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
PASS_THROUGH = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def keep_float_nodes(path: Path, tail: bool) -> list[str]:
    """Attention ops, and with `tail` the head's tail, in graph order (no duplicates)."""
    names = set(attention_nodes(path)) | (set(float_tail_nodes(path)) if tail else set())
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.name in names]


def attention_nodes(path: Path) -> list[str]:
    """MatMuls whose two operands are both activations, and Softmax ops that feed one."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name:
            continue
        if any(i in constants for i in node.input[:2]):
            continue
        found.append(node.name)
        for i in node.input[:2]:
            src = producer.get(i)
            while src is not None and src.op_type in PASS_THROUGH:
                src = producer.get(src.input[0])
            if src is not None and src.op_type == "Softmax" and src.name:
                found.append(src.name)
    return found


def float_tail_nodes(path: Path) -> list[str]:
    """Names of the tail's nodes, in graph order (unnamed nodes cannot be excluded: skipped)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {out: node for node in graph.node for out in node.output}
    tail: set[str] = set()
    stack = [o.name for o in graph.output]
    seen: set[str] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        weighted = (node.op_type in WEIGHTED and len(node.input) > 1
                    and node.input[1] in constants)
        if weighted and not _fed_by_softmax(node, producer):
            continue
        if node.name:
            tail.add(node.name)
        stack.extend(i for i in node.input if i and i not in constants)
    return [n.name for n in graph.node if n.name in tail]


def _fed_by_softmax(node, producer: dict) -> bool:
    """Whether the node's data input is a softmax, looking through reshapes and transposes."""
    current = producer.get(node.input[0])
    while current is not None and current.op_type in PASS_THROUGH:
        current = producer.get(current.input[0])
    return current is not None and current.op_type == "Softmax"
