"""OpenVINO IR for Intel x86: fp32, fp16 weights, int8 with NNCF PTQ, int4 NNCF weight
compression. The FP32 conversion from ONNX is done once per run and shared by every target.

The runtime is pinned to f32 inference precision for fp32/fp16/int8: on CPUs with AMX or
AVX512-BF16, OpenVINO's default is bf16, which silently changes results.
"""

from __future__ import annotations

from device_profiles import Target
from optimize.errors import CalibrationError, QuantizationError, ToolchainError
from optimize.formats import Artifact, BuildContext
from optimize.quiet import quiet

F32_RUNTIME = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def _fp32_model(target: Target, ctx: BuildContext):
    import openvino as ov

    if "openvino_fp32" not in ctx.cache:
        try:
            ctx.cache["openvino_fp32"] = ov.convert_model(str(ctx.source.onnx_path))
        except Exception as exc:  # OpConversionFailure and friends: C++ text over many lines
            raise ToolchainError(_conversion_error(target, exc)) from None
    return ctx.cache["openvino_fp32"].clone()


def _conversion_error(target: Target, exc: Exception) -> str:
    """One line: the ops OpenVINO has no conversion rule for, and the way out."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ops = next((line for line in lines if "No conversion rule" in line), None)
    why = ops or (lines[-1][:200] if lines else type(exc).__name__)
    return (f"{target.requested}: OpenVINO could not convert the model ({why}); replace those "
            "ops in the model, or use --format onnx")


def build(target: Target, ctx: BuildContext) -> Artifact:
    import openvino as ov

    model = _fp32_model(target, ctx)
    record: dict | None = None
    compress_to_fp16 = False
    if target.precision == "fp16":
        compress_to_fp16 = True
        record = {"step": "fp16", "tool": "openvino.save_model(compress_to_fp16=True)"}
    elif target.precision == "int8":
        model, record = _int8(model, target, ctx)
    elif target.precision == "int4":
        model, record = _int4(model, target, ctx)
    xml = ctx.unique_path(target.name, ".xml")
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    return Artifact(files={"model": xml, "weights": xml.with_suffix(".bin")}, record=record,
                    runtime_options=dict(F32_RUNTIME))


def _int8(model, target: Target, ctx: BuildContext):
    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise CalibrationError("int8 needs calibration images: pass --calib DIR with 50-500 "
                               "typical input images")
    scheme = target.scheme
    if "calibrate_with" in scheme:
        return _int8_from_qdq(target, ctx)
    return _int8_nncf(model, target, ctx)


def _int8_from_qdq(target: Target, ctx: BuildContext):
    """Quantize with onnxruntime (activation ranges shared with the ONNX target) in the Q/DQ
    placement the scheme asks for, and convert the Q/DQ graph to IR."""
    import openvino as ov

    from device_profiles import qdq_scheme
    from optimize.formats.onnx import quantized_onnx

    scheme = target.scheme
    onnx_scheme = qdq_scheme(scheme)
    path, onnx_record = quantized_onnx("int8", onnx_scheme, ctx)
    return ov.convert_model(str(path)), {
        **onnx_record,
        "scheme": scheme["name"],
        "tool": f"{onnx_record['tool']} (scheme {onnx_scheme['name']}) -> openvino.convert_model",
    }


def _int8_nncf(model, target: Target, ctx: BuildContext):
    import nncf

    scheme = target.scheme
    dataset = nncf.Dataset(list(ctx.calibration.tensors))
    # OpenVINO splits Gemm/Conv with bias into "NAME/WithoutBiases" (MatMul/Convolution) + Add.
    ignored = nncf.IgnoredScope(names=[f"{n}{s}" for n in ctx.exclude_nodes
                                       for s in ("", "/WithoutBiases")], validate=False)
    with quiet():
        quantized = nncf.quantize(
            model, dataset, subset_size=len(ctx.calibration),
            preset=nncf.QuantizationPreset.MIXED if scheme.get("preset") == "mixed"
            else nncf.QuantizationPreset.PERFORMANCE,
            fast_bias_correction=scheme.get("fast_bias_correction", True),
            ignored_scope=ignored,
        )
    return quantized, {
        "step": "int8",
        "tool": "nncf.quantize (OpenVINO backend)",
        "scheme": scheme["name"],
        "preset": scheme.get("preset", "performance"),
        "fast_bias_correction": scheme.get("fast_bias_correction", True),
        "calibration_images": len(ctx.calibration),
        "excluded_nodes": list(ctx.exclude_nodes),
    }


def _int4(model, target: Target, ctx: BuildContext):
    import nncf

    scheme = target.scheme
    weighted = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                and any(i.get_source_output().get_node().get_type_name() in ("Constant", "Convert")
                        for i in op.inputs())]
    if not weighted:
        kinds = sorted({op.get_type_name() for op in model.get_ops()
                        if op.get_type_name() in ("Convolution", "GroupConvolution")})
        raise QuantizationError(
            "int4 found nothing to compress: NNCF compresses MatMul weights to 4 bit, and this "
            f"model's weights are in {', '.join(kinds) or 'other ops'}; use int8 instead")
    from nncf.quantization.advanced_parameters import (
        AdvancedCompressionParameters,
        GroupSizeFallbackMode,
    )

    # A layer whose input width is not a multiple of the group size gets a smaller group.
    advanced = AdvancedCompressionParameters(
        group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=8)
    with quiet():
        compressed = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=scheme["block_size"],
            ratio=1.0, all_layers=True, advanced_parameters=advanced)
    weights = weight_precisions(compressed)
    if not any("int4" in kinds for kinds in weights.values()):
        raise QuantizationError(
            "int4 could not put any MatMul weight in 4-bit groups (inputs narrower than 8 "
            "channels); use int8 instead")
    return compressed, {
        "step": "int4",
        "tool": "nncf.compress_weights (OpenVINO backend)",
        "scheme": scheme["name"],
        "mode": "int4_sym",
        "group_size": scheme["block_size"],
        "all_layers": True,
        "compressed_matmuls": weights.get("MatMul", {}).get("int4", 0),
        # read from the compressed model: {op type: {int4 | int8 | float: weights}}
        "weights": weights,
        "int4_weights": _ops_holding(weights, "int4"),
        "int8_weights": _ops_holding(weights, "int8"),
        "float_weights": _ops_holding(weights, "float"),
        "why_all_layers": "NNCF keeps the last layer in int8 by default (a backup for LLM "
                          "heads); for a CNN whose only MatMul is the classifier that would "
                          "leave nothing in 4 bit",
    }


# Ops whose weight input (index) a compressed model feeds from a Constant, through the
# decompression ops NNCF inserts (Convert, Subtract zero point, Multiply scale, Reshape).
WEIGHTED_OPS = {"MatMul": 1, "Convolution": 1, "GroupConvolution": 1,
                "ConvolutionBackpropData": 1, "GroupConvolutionBackpropData": 1, "Gather": 0}
DECOMPRESSION_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}
BITS = {"i4": "int4", "u4": "int4", "nf4": "int4", "i8": "int8", "u8": "int8",
        "f32": "float", "f16": "float", "bf16": "float"}


def weight_precisions(model) -> dict[str, dict[str, int]]:
    """How the weights of `model` (an ov.Model) are stored, per op type: {"Convolution":
    {"int8": 33}, "MatMul": {"int4": 1}}. Read from the element type of the Constant each
    weighted op's weight comes from, so the record says what the model holds, not what NNCF
    is expected to do."""
    counts: dict[str, dict[str, int]] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in WEIGHTED_OPS or op.get_input_size() <= WEIGHTED_OPS[kind]:
            continue
        node = op.input(WEIGHTED_OPS[kind]).get_source_output().get_node()
        while node.get_type_name() in DECOMPRESSION_OPS:
            node = node.input(0).get_source_output().get_node()
        if node.get_type_name() != "Constant":
            continue  # an activation (attention MatMul, a Gather of indices): no weight
        bits = BITS.get(node.get_output_element_type(0).get_type_name())
        if bits is None:
            continue  # i32/i64: indices or shapes, not weights
        per_op = counts.setdefault(kind, {})
        per_op[bits] = per_op.get(bits, 0) + 1
    return counts


def _ops_holding(weights: dict[str, dict[str, int]], bits: str) -> dict[str, int]:
    """{op type: count} of the weights stored as `bits`."""
    return {op: kinds[bits] for op, kinds in sorted(weights.items()) if kinds.get(bits)}
