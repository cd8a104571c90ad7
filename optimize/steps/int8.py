"""INT8 static post-training quantization (QDQ, per-channel weights) in the profile's scheme.

The scheme comes from device_profiles/schemes.yaml: TensorRT wants symmetric int8 everywhere
with float biases and weights as Q->DQ pairs; onnxruntime on CPU wants uint8 activations.
Activation ranges are computed once per calibration method and reused by every later build
of the run (the guard's retries); biases are then corrected for the weight rounding
(optimize/bias_correction.py) and the corrected model is quantized with the same ranges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimize.bias_correction import correct, input_means
from optimize.calibration import OrtCalibrationReader
from optimize.errors import CalibrationError
from optimize.quiet import quiet
from optimize.shared_ranges import drop_requantization, share_concat_ranges
from optimize.steps.compact import compact

# onnxruntime's calibrator options per method. Entropy needs a fine histogram: quantize_static
# builds it with 128 bins for 128 quantized bins, which leaves KL nothing to choose and gives
# the min-max ranges; 2048 bins are TensorRT's entropy calibrator's.
CALIBRATOR_OPTIONS = {"minmax": {}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
                      "percentile": {"num_bins": 2048, "percentile": 99.999}}


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
    graph = _graph(prepared)
    output_ops = _output_op_types(graph)
    extra = {
        # The model's own outputs stay float: the decoder reads floats, and 8-bit logits alone
        # cost EfficientNet-Lite0 8 points of top-1 agreement (0.88 -> 0.96) here.
        "OpTypesToExcludeOutputQuantization": sorted(
            set(output_ops) | set(scheme.get("float_output_op_types", ()))),
        "ActivationSymmetric": scheme["activation_symmetric"],
        "WeightSymmetric": scheme["weight_symmetric"],
        "QuantizeBias": scheme["quantize_bias"],
        "AddQDQPairToWeight": scheme["weights_as_qdq_pairs"],
    }
    ranges = _ranges(src, prepared, ctx, method)
    op_types = _op_types_to_quantize(scheme)
    float_nodes = list(ctx.exclude_nodes)
    if scheme.get("float_constant_eltwise"):
        float_nodes += _constant_eltwise_nodes(graph)
    shared, unified, requantizations = 0, None, 0
    if scheme.get("shared_concat_ranges"):
        unified = dst.with_name(dst.stem + ".shared-ranges.json")
        shared = share_concat_ranges(graph, ranges, unified, set(float_nodes))
        ranges = unified
    if scheme.get("unsigned_where_nonnegative"):
        extra["TensorQuantOverrides"] = _unsigned_nonnegative(ranges, QuantType.QUInt8)

    def quantize(model: Path, out: Path) -> None:
        with quiet():
            quantize_static(
                str(model),
                str(out),
                None,
                calibration_cache_path=str(ranges),
                quant_format=QuantFormat.QDQ,
                activation_type=qtype[scheme["activations"]],
                weight_type=qtype[scheme["weights"]],
                per_channel=scheme["per_channel"],
                calibrate_method=method,
                nodes_to_exclude=float_nodes,
                op_types_to_quantize=op_types,
                extra_options=extra,
            )

    quantize(prepared, dst)
    corrected = None
    if ctx.bias_correction:
        means_key = ("int8-input-means", str(src))
        if means_key not in ctx.cache:
            ctx.cache[means_key] = input_means(prepared, ctx.calibration, ctx.input_name)
        fixed = dst.with_name(dst.stem + ".bc.onnx")
        try:
            corrected = correct(prepared, dst, ctx.cache[means_key], fixed)
        except (RuntimeError, ValueError, KeyError) as exc:  # a graph it cannot read: skip it
            corrected = {"layers": 0, "skipped": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            quantize(fixed, dst)
        fixed.unlink(missing_ok=True)
    if unified is not None:
        unified.unlink(missing_ok=True)
        requantizations = drop_requantization(dst)
    if ctx.exclude_nodes:
        _float_inputs(dst, prepared, set(ctx.exclude_nodes))
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
        "uint8_nonnegative_activations": len(extra.get("TensorQuantOverrides", {})),
        "concat_shared_ranges": shared,
        "requantizations_removed": requantizations,
        "bias": "int32" if scheme["quantize_bias"] else "float",
        "float_outputs_of": output_ops,
        "float_op_types": sorted(scheme.get("float_op_types", ())),
        "method": ctx.calibration_method,
        "calibration_images": len(ctx.calibration),
        "bias_correction": corrected,
        "excluded_nodes": list(ctx.exclude_nodes),
        "compacted": compacted,
    }


def _op_types_to_quantize(scheme: dict) -> list[str] | None:
    """onnxruntime's default op list (None) less the scheme's `float_op_types`: the ops a
    runtime fuses into the convolution before them (OpenVINO's CPU plugin folds Sigmoid * x
    into the convolution as a post-op, and a Q/DQ pair between them forbids that)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    keep_float = set(scheme.get("float_op_types", ()))
    if not keep_float:
        return None
    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - keep_float)


def _unsigned_nonnegative(ranges: Path, uint8) -> dict:
    """uint8 for every activation never below 0 in calibration (after a ReLU, a sigmoid): its
    zero point is then 0, so a symmetric-int8 scheme keeps the sign bit's precision there, as
    NNCF does for OpenVINO."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    return {name: [{"quant_type": uint8, "symmetric": False}]
            for name, data in load_tensors_data(ranges).items()
            if float(np.min(data.range_value[0])) >= 0.0}


ELTWISE = {"Add", "Sub", "Mul", "Div"}


def _constant_eltwise_nodes(graph) -> list[str]:
    """Add/Sub/Mul/Div nodes with a constant operand (a folded batch norm, the "+3, /6" of a
    hard-swish): a runtime that fuses them into the convolution before them wants them float,
    while a residual Add of two activations stays quantized."""
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type in ELTWISE and n.name and constants & set(n.input)]


def _ranges(src: Path, prepared: Path, ctx, method) -> Path:
    """Activation ranges of the float model for `method`, computed once per source and method
    (they do not depend on which layers are excluded) and kept as onnxruntime's cache file."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    key = ("int8-ranges", str(src), ctx.calibration_method)
    if key not in ctx.cache:
        path = prepared.with_name(f"{prepared.stem}.{ctx.calibration_method}-ranges.json")
        augmented = prepared.with_name(prepared.stem + ".calib.onnx")
        with quiet():
            calibrator = create_calibrator(
                prepared, None, augmented_model_path=str(augmented), calibrate_method=method,
                extra_options=CALIBRATOR_OPTIONS[ctx.calibration_method])
            # A few images per call: the histogram calibrators keep every activation of
            # the images of one call (GBs for a 640x640 detector), then fold them into their
            # histograms; min-max keeps only per-tensor extremes either way.
            for chunk in _chunks(ctx.calibration, CALIBRATION_CHUNK):
                calibrator.collect_data(OrtCalibrationReader(chunk, ctx.input_name))
            save_tensors_data(calibrator.compute_data(), path)
        del calibrator
        augmented.unlink(missing_ok=True)
        ctx.cache[key] = path
    return ctx.cache[key]


CALIBRATION_CHUNK = 4  # images per calibrator call


def _chunks(images, size: int):
    from optimize.fidelity import subset

    for start in range(0, len(images), size):
        yield subset(images, list(range(start, min(start + size, len(images)))))


def _float_inputs(path: Path, float_path: Path, excluded: set[str]) -> None:
    """Feed excluded nodes the float tensors, not their Q/DQ'd copies.

    onnxruntime 1.2x/1.3x re-quantizes a Conv/Gemm whose input comes from a DequantizeLinear and
    whose weights are float (its WeightBiasQuantization graph optimization, per-tensor int8), so
    an excluded layer inside the graph would be quantized again when the session is created --
    per tensor, worse than the per-channel int8 it was excluded from. Only where the Q/DQ pair
    wraps the very tensor the float model fed the node: where the quantizer dropped an
    activation (a ReLU6 folded into the Q range), the float tensor before it is not the same.
    """
    import onnx

    float_graph = onnx.load(str(float_path)).graph
    float_inputs = {n.name: list(n.input) for n in float_graph.node if n.name in excluded}
    float_producer = {o: n for n in float_graph.node for o in n.output}
    float_inits = {t.name: t for t in float_graph.initializer}
    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in float_inputs:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            source = q.input[0]
            if i >= len(float_inputs[node.name]) or source != float_inputs[node.name][i]:
                continue
            wanted = float_producer.get(source)
            made = producer.get(source)
            if wanted is None or made is None or wanted.op_type == made.op_type:
                node.input[i] = source
            elif wanted.op_type in ("Relu", "Clip"):
                # The quantizer folded this activation into the Q range; restore it in float.
                node.input[i] = _float_activation(graph, wanted, source, float_inits)
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
    _topological_order(graph)
    onnx.save(model, str(path))


def _topological_order(graph) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest as it was
            ordered += rest
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


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
            "quantizer breaks them); export the model without in-graph NMS, or use fp32 (x86 "
            "targets: fp16 through --format openvino)")


def _float_activation(graph, activation, source: str, float_inits: dict) -> str:
    """Append a float copy of `activation` (Relu/Clip) applied to `source`; return its output."""
    from onnx import helper

    out = f"{source}_float_{activation.op_type.lower()}"
    if not any(out in n.output for n in graph.node):
        have = {t.name for t in graph.initializer}
        for name in activation.input[1:]:
            if name and name not in have and name in float_inits:
                graph.initializer.append(float_inits[name])
        graph.node.append(helper.make_node(activation.op_type, [source, *activation.input[1:]],
                                           [out], name=f"{activation.name}_float",
                                           **{a.name: helper.get_attribute_value(a)
                                              for a in activation.attribute}))
    return out


def _graph(path: Path):
    """The graph of `path` (without weights), read once for the placement questions above."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def _output_op_types(graph) -> list[str]:
    """Op types of the nodes that produce the graph's outputs."""
    outputs = {o.name for o in graph.output}
    return sorted({n.op_type for n in graph.node if outputs & set(n.output)})
