"""TFLite for LiteRT (Raspberry Pi): one FP32 conversion per run, precisions applied to it.

    nn.Module --litert-torch--> fp32.tflite      (NHWC input, I/O named as in the ONNX model)
    model.onnx --onnx2torch--> torch.fx --litert-torch--> fp32.tflite   (optimize/onnx_to_torch.py)
    fp32.tflite --ai-edge-quantizer--> fp16 | int8 | int4

An ONNX source goes through torch rather than onnx2tf + TensorFlow (~1.4 GB beside
litert-torch): onnx2torch is pure Python, its graph is checked against onnxruntime before
conversion, and its submodules keep the ONNX node names, so int8 keeps the same nodes float
(a detector head's tail, attention: optimize/keep_float.py) as the ONNX and OpenVINO targets.

fp16: fp16 weights, float math and float I/O. int8: static int8 inside, an int8 input whose
(scale, zero point) the manifest carries so edge_sdk quantizes frames itself, and float outputs
(the output layers keep int8 weights but give float results: int8 logits tie); from an ONNX
source, the ops of the nodes int8 must keep float stay float. int4:
FULLY_CONNECTED weights in 4-bit blocks of 32 with int8 activations made on the fly;
convolutions stay float (4-bit conv weights lose too much).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import io
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_profiles import Target
from edge_sdk.backends.model_io import signature_name
from edge_sdk.manifest import InputSpec, OutputSpec
from optimize.errors import CalibrationError, QuantizationError, ToolchainError
from optimize.formats import Artifact, BuildContext
from optimize.intake import is_torchscript

INT4_BLOCK = 32
BIAS_LIMIT = 2**30  # largest int32 bias kept, leaving headroom for the accumulator


@dataclass(frozen=True)
class _Float:
    """The FP32 TFLite model every precision starts from, and how to describe its I/O."""

    path: Path
    signature: str
    input_spec: InputSpec  # TFLite name, shape and layout; preprocessing from the source
    tool: str
    output_order: tuple[str, ...]  # the source's output names: the manifest keeps its order
    # signature name -> the source model's name, which the manifest records (every format's)
    source_names: dict[str, str] = dataclasses.field(default_factory=dict)
    submodules: dict[str, str] | None = None  # ONNX node -> torch submodule (ONNX sources)
    record: dict = dataclasses.field(default_factory=dict)  # how it was converted


def build(target: Target, ctx: BuildContext) -> Artifact:
    _refuse_early(target, ctx)
    fp32 = _fp32_model(target, ctx)
    if target.precision == "fp32":
        return _artifact(fp32.path, fp32, {"step": "fp32", "tool": fp32.tool, **fp32.record})
    out = ctx.unique_path(target.name, ".tflite")
    data = fp32.path.read_bytes()
    if target.precision == "fp16":
        model, record = _fp16(data)
    elif target.precision == "int8":
        model, record = _int8(data, fp32, target, ctx)
    elif target.precision == "int4":
        model, record = _int4(data, target)
    else:
        raise ToolchainError(f"{target.requested}: tflite has no {target.precision} step")
    out.write_bytes(model)
    return _artifact(out, fp32, {**record, "tool": f"{fp32.tool} + {record['tool']}",
                                 **fp32.record})


def _refuse_early(target: Target, ctx: BuildContext) -> None:
    """Refuse what cannot work before the conversion, which takes a while."""
    if target.precision == "int8" and (ctx.calibration is None or len(ctx.calibration) == 0):
        raise CalibrationError(f"{target.requested} needs calibration images: pass --calib DIR "
                               "with 50-500 typical input images")
    if target.precision == "int4":
        held = _onnx_weight_holders(ctx.source.onnx_path)
        if not held.get("Gemm") and not held.get("MatMul"):
            raise QuantizationError(_nothing_4bit(target, held))


def _nothing_4bit(target: Target, held: dict[str, int]) -> str:
    where = ", ".join(f"{op} x{n}" for op, n in sorted(held.items())) or "no weighted ops"
    return (f"{target.requested}: int4 found nothing to compress: LiteRT runs 4-bit weights in "
            f"fully connected layers, and this model has none (its weights are in {where}); "
            "use int8 instead")


def _onnx_weight_holders(path: Path) -> dict[str, int]:
    """ONNX op types that take a constant weight of rank >= 2 (Gemm/MatMul become TFLite's
    FULLY_CONNECTED)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2}
    return dict(Counter(n.op_type for n in graph.node if len(n.input) > 1
                        and n.input[1] in weights))


def _artifact(path: Path, fp32: _Float, record: dict) -> Artifact:
    """Describe the file's real I/O (dtype, quantization), read back from the model itself."""
    inputs, outputs = _io_specs(path, fp32)
    record = {**record, "input": inputs[0].dtype, "outputs": sorted({o.dtype for o in outputs})}
    return Artifact(files={"model": path}, record=record, inputs=inputs, outputs=outputs)


# ---------------------------------------------------------------- FP32 conversion


def _fp32_model(target: Target, ctx: BuildContext) -> _Float:
    if ("tflite", "fp32") not in ctx.cache:
        if ctx.source.kind == "pytorch" and not is_torchscript(ctx.torch_module):
            if ctx.torch_module is None:
                raise ToolchainError(f"{target.requested}: the PyTorch module was not passed to "
                                     "the TFLite exporter (BuildContext.torch_module)")
            fp32 = _from_torch(target, ctx)
        else:
            fp32 = _from_onnx(target, ctx)
        ctx.cache[("tflite", "fp32")] = fp32
    return ctx.cache[("tflite", "fp32")]


def _from_torch(target: Target, ctx: BuildContext) -> _Float:
    return _litert(target, ctx, ctx.torch_module, "")


def _litert(target: Target, ctx: BuildContext, module, tool: str) -> _Float:
    """litert-torch, with the input taken as NHWC (TFLite's layout, so the converter leaves no
    transpose in the graph) and the signature named like the ONNX model's inputs/outputs.
    With --batch N the batch dimension is left open (1..N): the device resizes the input
    tensor to the frames it has."""
    import torch

    spec = ctx.input_spec
    nhwc = spec.layout == "NCHW" and len(spec.shape) == 4
    input_name = signature_name(spec.name)
    output_names = [signature_name(o.name) for o in ctx.outputs]
    if len({input_name, *output_names}) < 1 + len(output_names):
        raise ToolchainError(f"{target.requested}: the model's input and output names "
                             f"({', '.join([spec.name, *(o.name for o in ctx.outputs)])}) are "
                             "not told apart in a TFLite signature, where every character "
                             "but letters, digits and _ becomes _; rename them in the model, "
                             "or use --format onnx")
    shape = (spec.shape[0], spec.shape[2], spec.shape[3], spec.shape[1]) if nhwc else spec.shape
    dynamic = None
    if ctx.batch > 1:  # traced at 2 frames: an example of 1 would fix the dimension at 1
        shape = (2, *shape[1:])
        dynamic = {input_name: {0: torch.export.Dim("batch", min=1, max=ctx.batch)}}
    torch.manual_seed(0)
    example = torch.rand(*shape) * 2 - 1
    wrapper = _named_io(module, input_name, output_names, nhwc)
    out = ctx.unique_path("tflite-fp32", ".tflite")
    with _quiet():
        import litert_torch

        litert_torch.config.show_progress = False
        try:
            with torch.no_grad():
                model = litert_torch.convert(wrapper, sample_kwargs={input_name: example},
                                             dynamic_shapes=dynamic)
            model.export(str(out))
        except Exception as exc:  # litert-torch raises plain RuntimeError/NotImplementedError
            raise ToolchainError(_torch_error(target, exc, ctx.batch)) from None
        if ctx.batch > 1:
            _check_open_batch(out, example.numpy(), ctx.batch, target)
    layout = "NHWC" if nhwc else spec.layout
    return _Float(out, "serving_default",
                  dataclasses.replace(spec, name=input_name, layout=layout),
                  f"{tool}litert-torch {_version('litert-torch')}", tuple(output_names),
                  {input_name: spec.name, **{signature_name(o.name): o.name
                                             for o in ctx.outputs}})


def _check_open_batch(path: Path, example: np.ndarray, batch: int, target: Target) -> None:
    """The converted model must run 1 and `batch` frames, each frame as it runs alone: XNNPACK
    refuses some graphs with an open dimension (PP-OCRv4's), which only shows when run."""
    frames = np.stack([example[i % len(example)] * (1.0 - 0.5 * i / batch)
                       for i in range(batch)]).astype(np.float32)  # each frame different

    def run(x: np.ndarray) -> list[np.ndarray]:
        interpreter.resize_tensor_input(index, list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]

    try:
        interpreter = _interpreter(path)
        index = interpreter.get_input_details()[0]["index"]
        alone = [run(frames[i : i + 1]) for i in range(batch)]
        together = run(frames)
    except (RuntimeError, ValueError) as exc:
        raise ToolchainError(_torch_error(target, exc, batch)) from None
    from optimize.intake import frames_agree

    for k, got in enumerate(together):
        if not frames_agree(got, np.concatenate([a[k] for a in alone])):
            raise ToolchainError(f"{target.requested}: the TFLite model converted with an open "
                                 f"batch dimension gives a frame in a batch of {batch} other "
                                 "results than alone; use --format onnx or openvino for a "
                                 "batched bundle, or drop --batch")


def _named_io(module, input_name: str, output_names: list[str], nhwc: bool):
    """Wrap the model: one keyword input named `input_name` (NHWC when `nhwc`) and a dict of
    named outputs, flattened in the order torch.onnx.export uses, so the signature matches the
    ONNX names. torch.export reads the input's name from forward's signature (dynamic shapes
    are given by argument name)."""
    import inspect

    import torch
    from torch.utils import _pytree

    class NamedIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, **inputs):
            (x,) = inputs.values()
            leaves = _pytree.tree_leaves(self.module(x.permute(0, 3, 1, 2) if nhwc else x))
            names = output_names + [f"output_{i}" for i in range(len(output_names), len(leaves))]
            return dict(zip(names, leaves))

    kind = inspect.Parameter
    NamedIO.forward.__signature__ = inspect.Signature(
        [kind("self", kind.POSITIONAL_OR_KEYWORD), kind(input_name, kind.KEYWORD_ONLY)])
    return NamedIO().eval()


def _torch_error(target: Target, exc: Exception, batch: int = 1) -> str:
    """One line naming the op the converter could not lower, and where it is in the model."""
    text = str(exc)
    if batch > 1:  # few ops lower or run with an open dimension (no batched MatMul)
        first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
        return (f"{target.requested}: the TFLite route cannot keep this model's batch dimension "
                f"open (--batch {batch}: {first}); use --format onnx or openvino for a "
                "batched bundle, or drop --batch")
    op = re.search(r"Lowering not found: ([\w.]+)", text) or re.search(
        r"target=torch\.ops\.([\w.]+)", text)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text)
    where = frames[-1] if frames else None  # the deepest frame: the user's own code
    first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    at = f" ({Path(where[0]).name}:{where[1]}, in {where[2]})" if where else ""
    if op:
        name = re.sub(r"\.(default|Tensor|Scalar|dim)$", "", op[1])
        why = "it has no TFLite lowering" if first.startswith("Lowering not found") else first
        return (f"{target.requested}: litert-torch cannot convert op {name}{at}: {why}; "
                "replace that op in the model, or use --format onnx")
    return (f"{target.requested}: litert-torch could not convert the model: {first}; use "
            "--format onnx")


def _from_onnx(target: Target, ctx: BuildContext) -> _Float:
    """onnx2torch's graph, checked against onnxruntime on a calibration image, then the
    litert-torch route of a PyTorch model."""
    from optimize import onnx_to_torch

    converted = onnx_to_torch.convert(ctx.source.onnx_path, target.requested)
    images = ctx.calibration.tensors if ctx.calibration else ()
    sample = (np.asarray(images[0][:1], np.float32) if images else
              np.random.default_rng(0).uniform(-1, 1, ctx.input_spec.shape).astype(np.float32))
    with _quiet():
        diff = onnx_to_torch.check(converted, ctx.source.onnx_path, sample, target.requested)
    flt = _litert(target, ctx, converted.module, f"{converted.tool} + ")
    # max |torch - onnxruntime| / max(|onnxruntime|, 1), over the outputs (onnx_to_torch.check)
    return dataclasses.replace(flt, submodules=converted.submodules,
                               record={"onnx_to_torch_rel_diff": float(f"{diff:.3g}")})


# ---------------------------------------------------------------- precisions


def _fp16(fp32: bytes) -> tuple[bytes, dict]:
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    qt = quantizer.Quantizer(fp32)
    qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              num_bits=16,
                              algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    with _quiet():
        model = bytes(qt.quantize(enable_progress_bar=False,
                                  enable_progress_report=False).quantized_model)
    return model, {"step": "fp16", "tool": _aeq("float casting"),
                   "weights": "float16", "math": "float32 unless the runtime enables fp16"}


def _int8(fp32: bytes, flt: _Float, target: Target, ctx: BuildContext) -> tuple[bytes, dict]:
    """Static int8 with an int8 input and float outputs.

    Ranges are the min-max over all calibration images (not the quantizer's default moving
    average, which lets the first images dominate). The layers that produce the model's
    outputs keep int8 weights but give float results: int8 logits tie (on EfficientNet-Lite0,
    11 of 14 top-1 disagreements with FP32 were ties made by the 0.04 output step).
    """
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    op = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", op.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    for name in _output_tensor_names(flt.path):
        scope = f"(^|;){re.escape(name)}($|;)"
        for kind in (op.FULLY_CONNECTED, op.CONV_2D, op.DEPTHWISE_CONV_2D, op.BATCH_MATMUL):
            manager.add_dynamic_config(scope, kind, num_bits=8)
        manager.add_quantization_config(scope, op.OUTPUT, qtyping.OpQuantizationConfig(),
                                        algorithm_manager.AlgorithmName.NO_QUANTIZE)
    kept = _keep_float(manager, flt, ctx)
    recipe = manager.get_quantization_recipe()
    samples = [{flt.input_spec.name: _to_layout(t, ctx.input_spec.layout, flt.input_spec.layout)}
               for t in ctx.calibration.tensors]
    with _quiet():
        # Calibrated with the final recipe: ai-edge-quantizer ties an op's input and output
        # ranges by its config (YOLO11n's head in float with the all-int8 ranges: F1 0.66, with
        # its own: 0.89).
        merge = (_mean_of_extremes if ctx.calibration_method == "percentile"
                 else qsv_utils.min_max_update)
        calib = calibrator.Calibrator(fp32, num_threads=os.cpu_count() or 1,
                                      qsv_update_func=merge)
        calib.calibrate({flt.signature: samples}, manager)
        ranges = calib.get_model_qsvs()
        model = bytes(quantizer.Quantizer(fp32, recipe).quantize(
            ranges, enable_progress_bar=False, enable_progress_report=False).quantized_model)
    model, adjusted = _fit_bias_scales(model, fp32)
    model = _signature_to_dequantized(model)
    record = {
        "step": "int8", "tool": _aeq("static int8, dynamic-range output layers"),
        "scheme": _scheme_name(target), "activations": "int8 per-tensor asymmetric",
        "weights": "int8 per-channel symmetric", "bias": "int32",
        "method": TFLITE_METHODS.get(ctx.calibration_method, "minmax"),
        "calibration_images": len(ctx.calibration), "weight_scales_raised_for_bias": adjusted,
        "output_layers": "int8 weights, activations quantized on the fly, float32 results",
        "float_activation_ops": _float_ops(model),
    }
    if ctx.calibration_method not in TFLITE_METHODS:
        record["method_note"] = (f"--calib-method {ctx.calibration_method} applies to ONNX "
                                 "targets; ai-edge-quantizer calibrates with min-max here")
    if kept:
        record["excluded_nodes"] = kept
    elif ctx.exclude_nodes:
        record["excluded_nodes_note"] = "ONNX node names do not map to TFLite; none excluded"
    return model, record


# ai-edge-quantizer keeps one min and max per tensor; --calib-method picks how they merge over
# the calibration images. "percentile" has no histogram here, so its counterpart is the mean of
# each image's extremes: an outlier seen on one image of n widens the range by 1/n of its
# excess instead of all of it (YOLO11n's head cut into six outputs, rpi5-int8 on this host:
# worst output 18.3 dB SQNR with min-max, 19.8 dB with the mean, no layer in float).
TFLITE_METHODS = {"minmax": "minmax", "percentile": "mean of per-image min/max"}


def _mean_of_extremes(qsv: dict, new_qsv: dict) -> dict:
    """ai-edge-quantizer's qsv_update_func: the running mean of the per-image min and max."""
    if not qsv:
        return {**new_qsv, "images": 1}
    n = qsv.get("images", 1)
    return {"min": (qsv["min"] * n + new_qsv["min"]) / (n + 1),
            "max": (qsv["max"] * n + new_qsv["max"]) / (n + 1), "images": n + 1}


def _keep_float(manager, flt: _Float, ctx: BuildContext) -> list[str]:
    """Leave float the TFLite ops of the ONNX nodes int8 must not quantize (ctx.exclude_nodes).

    litert-torch names each tensor after the submodules that computed it ("...Conv2d_model/23/
    dfl/conv/Conv;1"), and onnx2torch names each submodule after its ONNX node, so a node's ops
    are found by name. A tensor that is a model output is named after the output instead: its
    op is kept float when the ONNX node producing that output is. Returns the nodes kept.
    """
    import onnx
    from ai_edge_quantizer import algorithm_manager, qtyping

    kept = [n for n in ctx.exclude_nodes if n in (flt.submodules or {})]
    if not kept:
        return []
    names = "|".join(re.escape(flt.submodules[n]) for n in kept)
    scopes = [f"_(?:{names});"]
    graph = onnx.load(str(ctx.source.onnx_path), load_external_data=False).graph
    producer = {out: node.name for node in graph.node for out in node.output}
    tensor_names = _signature_output_tensors(flt)
    scopes += [f"(^|;){re.escape(tensor_names[signature_name(o.name)])}($|;)" for o in graph.output
               if producer.get(o.name) in kept and signature_name(o.name) in tensor_names]
    for scope in scopes:
        manager.add_quantization_config(scope, qtyping.TFLOperationName.ALL_SUPPORTED,
                                        qtyping.OpQuantizationConfig(),
                                        algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return kept


def _signature_output_tensors(flt: _Float) -> dict[str, str]:
    """Signature output name -> the name of the tensor that holds it."""
    with _quiet():
        interpreter = _interpreter(flt.path)
        tensors = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
        runner = interpreter.get_signature_runner(flt.signature)
        outputs = runner.get_output_details()
    return {name: tensors[detail["index"]] for name, detail in outputs.items()}


def _output_tensor_names(path: Path) -> list[str]:
    with _quiet():
        return [d["name"] for d in _interpreter(path).get_output_details()]


def _int4(fp32: bytes, target: Target) -> tuple[bytes, dict]:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer import qtyping, quantizer

    model = _read(fp32)
    ops = Counter(_op_name(model, op) for op in model.subgraphs[0].operators)
    kept = {k: n for k, n in ops.items() if k in ("CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")}
    dense = _weights(model, schema.BuiltinOperator.FULLY_CONNECTED)
    if not dense:
        raise QuantizationError(_nothing_4bit(target, kept))
    block = (target.scheme or {}).get("block_size", INT4_BLOCK)
    blocks = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block}", None)  # 32 ... 256
    blockwise = blocks is not None and all(w.shape[-1] % block == 0 for w in dense)
    granularity = blocks if blockwise else qtyping.QuantGranularity.CHANNELWISE
    qt = quantizer.Quantizer(fp32)
    qt.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
                          num_bits=4, granularity=granularity)
    with _quiet():
        quantized = bytes(qt.quantize(enable_progress_bar=False,
                                      enable_progress_report=False).quantized_model)
    return quantized, {
        "step": "int4", "tool": _aeq("dynamic wi4"), "scheme": _scheme_name(target),
        "block_size": block if blockwise else None, "symmetric": True,
        "granularity": f"blocks of {block}" if blockwise else "per output channel",
        "activations": "float32 (int8 on the fly inside FULLY_CONNECTED)",
        "quantized_fully_connected": len(dense), "kept_float": kept,
        "why_kept_float": "4-bit convolution weights dropped top-1 agreement to 0.18 on "
                          "EfficientNet-Lite0; only dense layers are 4-bit",
    }


def _fit_bias_scales(quantized: bytes, fp32: bytes) -> tuple[bytes, int]:
    """Raise per-channel weight scales where the int32 bias would overflow.

    A folded BatchNorm can leave a channel with (near-)zero weights but a real bias; its weight
    scale is then tiny, bias / (input_scale * weight_scale) overflows int32 and the channel
    loses its bias (a CNN with two such channels fell to top-1 agreement 0.50; EfficientNet-
    Lite0 has 103 such channels in 28 layers, harmless there). The channel's weights are
    requantized with the raised scale and the bias refitted, as TensorFlow's own quantizer does.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model, floats = _read(quantized), _read(fp32)
    float_tensors = {t.name: t for t in floats.subgraphs[0].tensors}
    ops = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
           schema.BuiltinOperator.FULLY_CONNECTED)
    graph, adjusted = model.subgraphs[0], 0
    for op in graph.operators:
        if _op_code(model, op) not in ops or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (graph.tensors[i] for i in op.inputs[:3])
        if b.type != schema.TensorType.INT32 or w.type != schema.TensorType.INT8:
            continue
        wf, bf = float_tensors.get(w.name), float_tensors.get(b.name)
        if wf is None or bf is None:
            continue
        w_float, b_float = _array(floats, wf, np.float32), _array(floats, bf, np.float32)
        s_in = float(x.quantization.scale[0])
        s_w = np.asarray(w.quantization.scale, np.float64)
        needed = np.abs(b_float) / (s_in * BIAS_LIMIT)
        low = np.flatnonzero(s_w < needed)
        if low.size == 0:
            continue
        axis = w.quantization.quantizedDimension
        s_w[low] = needed[low]
        q = np.moveaxis(_array(model, w, np.int8).copy(), axis, 0)
        src = np.moveaxis(w_float, axis, 0)
        for c in low:
            q[c] = np.clip(np.rint(src[c] / s_w[c]), -127, 127)
        w.quantization.scale = s_w.astype(np.float32).tolist()
        q = np.moveaxis(q, 0, axis).astype(np.int8)
        model.buffers[w.buffer].data = q.reshape(-1).view(np.uint8)
        s_b = s_in * s_w
        b.quantization.scale = s_b.astype(np.float32).tolist()
        b.quantization.zeroPoint = [0] * len(s_b)
        b_q = np.clip(np.rint(b_float / s_b), -(2**31), 2**31 - 1).astype(np.int32)
        model.buffers[b.buffer].data = b_q.view(np.uint8)
        adjusted += int(low.size)
    if not adjusted:
        return quantized, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), adjusted


def _signature_to_dequantized(quantized: bytes) -> bytes:
    """Point each signature output at the float tensor the graph outputs.

    Where an output's tensor is int8 (a PyTorch model's second output, e.g. pooled features
    through a reshape), ai-edge-quantizer appends a DEQUANTIZE and makes its result the graph
    output, but leaves the signature naming the int8 tensor before it; the LiteRT backend then
    could not find the output by name and every multi-output PyTorch model's int8 export failed
    ('model.tflite has no output named ...').
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(quantized)
    moved = 0
    for signature in model.signatureDefs or []:
        graph = model.subgraphs[signature.subgraphIndex]
        outputs = set(graph.outputs)
        dequantized = {op.inputs[0]: op.outputs[0] for op in graph.operators
                       if _op_code(model, op) == schema.BuiltinOperator.DEQUANTIZE
                       and op.outputs[0] in outputs}
        for tensor_map in signature.outputs:
            if tensor_map.tensorIndex not in outputs and tensor_map.tensorIndex in dequantized:
                tensor_map.tensorIndex = dequantized[tensor_map.tensorIndex]
                moved += 1
    if not moved:
        return quantized
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ---------------------------------------------------------------- flatbuffer helpers


def _read(data: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _op_code(model, op) -> int:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])


def _op_name(model, op) -> str:
    return _builtin_names().get(_op_code(model, op), "CUSTOM")


@functools.lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _array(model, tensor, dtype) -> np.ndarray:
    data = model.buffers[tensor.buffer].data
    return np.frombuffer(bytes(data), dtype=dtype).reshape(tensor.shape)


def _weights(model, code: int) -> list[np.ndarray]:
    """Constant float weights (input 1) of every `code` op."""
    from ai_edge_litert import schema_py_generated as schema

    graph, found = model.subgraphs[0], []
    for op in graph.operators:
        if _op_code(model, op) != code or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        w = graph.tensors[op.inputs[1]]
        data = model.buffers[w.buffer].data
        if w.type == schema.TensorType.FLOAT32 and data is not None and len(data):
            found.append(_array(model, w, np.float32))
    return found


def _float_ops(data: bytes) -> dict[str, int]:
    """Ops (other than (de)quantize) with float results after int8 quantization: the output
    layers, plus any op the quantizer could not take."""
    from ai_edge_litert import schema_py_generated as schema

    model = _read(data)
    graph = model.subgraphs[0]
    kept = Counter(_op_name(model, op) for op in graph.operators
                   if any(graph.tensors[i].type == schema.TensorType.FLOAT32 for i in op.outputs))
    return {k: v for k, v in sorted(kept.items()) if k not in ("QUANTIZE", "DEQUANTIZE")}


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def _io_specs(path: Path, fp32: _Float) -> tuple[tuple[InputSpec, ...], tuple[OutputSpec, ...]]:
    """InputSpec/OutputSpecs with dtype and (scale, zp), named as the source model names them
    (the LiteRT backend finds each by its signature name: signature_name)."""
    with _quiet():  # allocating here also spends TFLite's once-per-process delegate log line
        interpreter = _interpreter(path)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner(fp32.signature)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if len(inputs) != 1:
        raise ToolchainError(f"{path.name} has {len(inputs)} inputs; edge-opt handles "
                             "single-image models")
    (name, detail), = inputs.items()
    spec = dataclasses.replace(fp32.input_spec, name=fp32.source_names.get(name, name),
                               shape=tuple(int(d) for d in detail["shape"]),
                               dtype=np.dtype(detail["dtype"]).name, quant=_quant(detail))
    rank = {name: i for i, name in enumerate(fp32.output_order)}
    names = sorted(outputs, key=lambda n: rank.get(n, len(rank)))  # signatures sort by name
    specs = tuple(OutputSpec(fp32.source_names.get(n, n),
                             tuple(int(x) for x in outputs[n]["shape"]),
                             np.dtype(outputs[n]["dtype"]).name, _quant(outputs[n]))
                  for n in names)
    return (spec,), specs


def _quant(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of an integer tensor; None for float tensors."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return None
    return float(scale), int(zero_point)


def _to_layout(tensor: np.ndarray, have: str, want: str) -> np.ndarray:
    if have == want:
        return tensor
    axes = (0, 2, 3, 1) if want == "NHWC" else (0, 3, 1, 2)
    return np.ascontiguousarray(tensor.transpose(axes))


def _scheme_name(target: Target) -> str | None:
    scheme = target.scheme
    return None if scheme is None else scheme["name"]


def _aeq(recipe: str) -> str:
    return f"ai-edge-quantizer {_version('ai-edge-quantizer')} ({recipe})"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def _quiet():
    """optimize.quiet, plus what the converters' C++ side (absl, TFLite, XNNPACK) writes
    straight to file descriptors 1 and 2. Yields what was printed, so a failure can still be
    explained."""
    from optimize.quiet import quiet

    captured = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink, quiet():
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.write(sink.read().decode(errors="replace"))
