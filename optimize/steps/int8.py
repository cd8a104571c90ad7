"""INT8 static post-training quantization (QDQ, per-channel weights) in the profile's scheme.

The scheme comes from device_profiles/schemes.yaml: TensorRT wants symmetric int8 everywhere
with float biases and weights as Q->DQ pairs; onnxruntime on CPU wants uint8 activations.
"""

from __future__ import annotations

from pathlib import Path

from optimize.calibration import OrtCalibrationReader
from optimize.errors import CalibrationError
from optimize.quiet import quiet
from optimize.steps.compact import compact

METHODS = ("minmax", "entropy", "percentile")


def run(src: Path, dst: Path, ctx) -> dict:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise CalibrationError("int8 needs calibration images: pass --calib DIR with 50-500 "
                               "typical input images")
    scheme = ctx.scheme
    _refuse_subgraphs(src)
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    with quiet():
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[ctx.calibration_method]
    output_ops = _output_op_types(prepared)
    extra = {
        # The model's own outputs stay float: the decoder reads floats, and 8-bit logits alone
        # cost EfficientNet-Lite0 8 points of top-1 agreement (0.88 -> 0.96) here.
        "OpTypesToExcludeOutputQuantization": output_ops,
        "ActivationSymmetric": scheme["activation_symmetric"],
        "WeightSymmetric": scheme["weight_symmetric"],
        "QuantizeBias": scheme["quantize_bias"],
        "AddQDQPairToWeight": scheme["weights_as_qdq_pairs"],
    }
    with quiet():
        quantize_static(
            str(prepared),
            str(dst),
            OrtCalibrationReader(ctx.calibration, ctx.input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=qtype[scheme["activations"]],
            weight_type=qtype[scheme["weights"]],
            per_channel=scheme["per_channel"],
            calibrate_method=method,
            nodes_to_exclude=list(ctx.exclude_nodes),
            extra_options=extra,
        )
    if ctx.exclude_nodes:
        _float_inputs(dst, set(ctx.exclude_nodes))
    if ctx.keep_prepared is not None:
        prepared.replace(ctx.keep_prepared)
    prepared.unlink(missing_ok=True)
    compacted = compact(dst) if ctx.compact else None
    return {
        "step": "int8",
        "tool": "onnxruntime.quantization.quantize_static",
        "scheme": scheme["name"],
        "format": "QDQ",
        "activations": scheme["activations"],
        "weights": scheme["weights"],
        "per_channel": scheme["per_channel"],
        "symmetric_activations": scheme["activation_symmetric"],
        "bias": "int32" if scheme["quantize_bias"] else "float",
        "float_outputs_of": output_ops,
        "method": ctx.calibration_method,
        "calibration_images": len(ctx.calibration),
        "excluded_nodes": list(ctx.exclude_nodes),
        "compacted": compacted,
    }


def _float_inputs(path: Path, excluded: set[str]) -> None:
    """Feed excluded nodes the float tensors, not their Q/DQ'd copies.

    onnxruntime 1.2x/1.3x re-quantizes a Conv/Gemm whose input comes from a DequantizeLinear and
    whose weights are float (its WeightBiasQuantization graph optimization, per-tensor int8), so
    an excluded layer inside the graph would be quantized again when the session is created --
    per tensor, worse than the per-channel int8 it was excluded from.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    outputs = {o.name for o in graph.output}
    while True:  # drop the Q/DQ pairs nothing reads any more
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not used & set(n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    onnx.save(model, str(path))


def _refuse_subgraphs(path: Path) -> None:
    """onnxruntime's static quantizer breaks graphs with Loop/If/Scan bodies (e.g. NMS built
    into a TensorFlow detector): say so instead of writing an invalid model."""
    import onnx

    from optimize.errors import QuantizationError

    model = onnx.load(str(path), load_external_data=False)
    control = sorted({n.op_type for n in model.graph.node if n.op_type in ("Loop", "If", "Scan")})
    if control:
        raise QuantizationError(
            f"int8 cannot quantize a graph with {'/'.join(control)} subgraphs (onnxruntime's "
            "quantizer breaks them); export the model without in-graph NMS, or use fp16")


def _output_op_types(path: Path) -> list[str]:
    """Op types of the nodes that produce the graph's outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    return sorted({n.op_type for n in model.graph.node if outputs & set(n.output)})
