"""INT4 weight-only: 4-bit blocks for MatMul/Gemm weights, run by onnxruntime's MatMulNBits.

onnxruntime has no 4-bit Conv kernel, so Conv weights stay float; a model with nothing
4-bit-able is refused with the op types that hold its weights.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from optimize.errors import QuantizationError


def run(src: Path, dst: Path, ctx) -> dict:
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    scheme = ctx.scheme
    model = onnx.load(str(src))
    converted = _gemm_to_matmul(model)
    candidates = _matmuls_with_constant_weights(model)
    if not candidates:
        held = _weight_holders(model)
        detail = ", ".join(f"{op} x{n}" for op, n in held.most_common()) or "none"
        raise QuantizationError(
            "int4 found nothing to compress: onnxruntime runs 4-bit weights only in "
            f"MatMul/Gemm (MatMulNBits), and this model's weights are in {detail}; "
            "use int8 instead"
        )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=scheme["block_size"],
        is_symmetric=scheme["weight_symmetric"],
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
        nodes_to_exclude=list(ctx.exclude_nodes),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    kept = _weight_holders(onnx.load(str(dst)))
    return {
        "step": "int4",
        "tool": "onnxruntime MatMulNBitsQuantizer",
        "scheme": scheme["name"],
        "block_size": scheme["block_size"],
        "symmetric": scheme["weight_symmetric"],
        "gemm_rewritten_as_matmul": converted,
        "quantized_matmuls": len(candidates),
        "kept_float": {op: n for op, n in kept.items()},
        "why_kept_float": "onnxruntime has no 4-bit kernel for these ops",
    }


def _initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def _weight_holders(model) -> Counter:
    """Op types that consume a float weight initializer of rank >= 2."""
    from onnx import TensorProto

    inits = _initializers(model)
    held: Counter = Counter()
    for node in model.graph.node:
        for name in node.input[1:2]:
            t = inits.get(name)
            if t is not None and len(t.dims) >= 2 and t.data_type == TensorProto.FLOAT:
                held[node.op_type] += 1
    return held


def _matmuls_with_constant_weights(model) -> list[str]:
    inits = _initializers(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def _gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W[, b]) with constant W as MatMul(A, W^T) + b so MatMulNBits can take it."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    nodes, converted = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if (node.op_type != "Gemm" or not plain or attrs.get("transA", 0)
                or node.input[1] not in inits):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        w_name = node.input[1] + "_kxn"
        model.graph.initializer.append(numpy_helper.from_array(weight, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                      name=node.name + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                          name=node.name + "_bias"))
        converted += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for t in unused:
        model.graph.initializer.remove(t)
    return converted
