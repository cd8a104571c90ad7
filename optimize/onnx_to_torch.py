"""ONNX -> torch.fx, so an ONNX source reaches TFLite through litert-torch like a PyTorch one.

Why onnx2torch and not onnx2tf + TensorFlow: onnx2torch is pure Python on the torch the
toolchain already has, while onnx2tf needs TensorFlow (~1.4 GB, its own protobuf) beside
litert-torch. Its graph matches onnxruntime's FP32 outputs on the real models here (max |diff|
1.7e-3 on YOLO11n's 0..640 pixel boxes, 1e-5 on PP-OCRv4's map and PicoDet's 8 head outputs,
measured by `check`), and each ONNX node becomes one submodule named after the node, so the
TFLite tensors litert-torch writes carry the ONNX node names and int8 can keep the same nodes
float as on the other formats (optimize/keep_float.py).

Two adjustments, both here:
  - onnx2torch imports torchvision for two ops (NonMaxSuppression, RoiAlign) at import time;
    PyPI's torchvision does not load beside the CPU torch wheel, so the toolchain installs
    onnx2torch without it and a stand-in serves the import; a graph with those ops is refused.
  - onnx2torch passes shape-like inputs (Reshape's shape, Split's sizes, Slice's bounds,
    Resize's scales) as tensors and reads their values in `forward`; torch.export traces with
    fake tensors and cannot read them. The input shape is fixed by then (optimize/intake.py),
    so those modules are rebuilt with the constants as Python values (`STATIC`, one entry per
    onnx2torch module type). Flatten, and a Reshape that copies the batch dimension, reshape
    to -1 there instead of reading the batch size: litert-torch lowers only concrete shapes,
    and with `--batch N` the batch dimension is left open.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optimize.errors import ToolchainError

NEEDS_TORCHVISION = {"NonMaxSuppression", "RoiAlign"}
# The converted graph must reproduce onnxruntime's FP32 outputs within this fraction of each
# output's largest magnitude, or within this much for outputs below 1 (probabilities): float32
# summation order alone gives ~1e-6 here.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Converted:
    """The torch module and, per ONNX node name, the name of the submodule that computes it."""

    module: object  # torch.fx.GraphModule
    submodules: dict[str, str]
    tool: str


def convert(path: Path, requested: str) -> Converted:
    """The ONNX model at `path` as a torch.fx.GraphModule whose shapes are all static."""
    import onnx

    model = _explicit_pads(_within_onnx2torch_opsets(onnx.load(str(path)), requested))
    refused = sorted({n.op_type for n in model.graph.node} & NEEDS_TORCHVISION)
    if refused:
        raise ToolchainError(f"{requested}: the TFLite route cannot convert {'/'.join(refused)} "
                             "(an in-graph NMS/RoI op); export the model without it, or use "
                             "--format onnx")
    onnx2torch = _import_onnx2torch(requested)
    from onnx2torch.onnx_graph import OnnxGraph

    with warnings.catch_warnings():  # Resize's "results might differ": `check` measures it
        warnings.simplefilter("ignore")
        try:
            module = onnx2torch.convert(model).eval()
        except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:
            raise ToolchainError(f"{requested}: onnx2torch cannot convert the model: "
                                 f"{str(exc).strip()[:200] or type(exc).__name__}; use "
                                 "--format onnx") from None
    names = list(OnnxGraph(model.graph).nodes)  # onnx2torch's submodule names, in node order
    submodules = {n.name: sub for n, sub in zip(model.graph.node, names) if n.name}
    _make_static(module)
    return Converted(module, submodules, f"onnx2torch {_version()}")


ONNX2TORCH_OPSET = 17  # the newest opset onnx2torch converts (ReduceMean-18 has no converter)


def _within_onnx2torch_opsets(model, requested: str):
    """torch's default ONNX exporter (dynamo) writes opset 18, and Reshape with allowzero=1:
    convert down to opset 17, and drop allowzero where the shape is a constant with no 0 (the
    attribute then changes nothing). onnx's converter leaves ReduceX's noop_with_empty_axes
    (new in 18) behind; at 0, its default, opset 17's behaviour is the same."""
    import onnx
    from onnx import numpy_helper, version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > ONNX2TORCH_OPSET:
        try:
            model = version_converter.convert_version(model, ONNX2TORCH_OPSET)
        except Exception as exc:  # onnx raises RuntimeError/ValueError with C++ text
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
            raise ToolchainError(f"{requested}: onnx cannot convert the model from opset "
                                 f"{opset} down to {ONNX2TORCH_OPSET} for onnx2torch ({first}); "
                                 "use --format onnx") from None
        for node in model.graph.node:
            _drop_attribute(node, "noop_with_empty_axes", 0)
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute
                      and n.attribute[0].type == onnx.AttributeProto.TENSOR})
    for node in model.graph.node:
        shape = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and 0 not in numpy_helper.to_array(shape).tolist():
            _drop_attribute(node, "allowzero", 1)
    return model


POOLS_AND_CONVS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def _explicit_pads(model):
    """auto_pad SAME_UPPER/SAME_LOWER (TensorFlow's "same", as in MediaPipe's and tf2onnx's
    models) written as the explicit pads it means, where the input's size is known: onnx2torch
    converts only explicit pads. The pads follow the ONNX spec: total = max((ceil(in / stride)
    - 1) x stride + (kernel - 1) x dilation + 1 - in, 0), the odd pixel at the end (UPPER) or
    the start (LOWER). `check` then compares the converted module with onnxruntime."""
    from onnx import helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  onnx's C++ errors; onnx2torch then names what it cannot do
        return model
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else 0
                     for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.graph.value_info, *inferred.graph.input)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if node.op_type not in POOLS_AND_CONVS or mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        kernel = (list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs
                  else weights.get(node.input[1], [0, 0])[2:])
        spatial = dims.get(node.input[0], [])[2:]
        if not kernel or len(spatial) != len(kernel) or 0 in spatial:
            continue  # size unknown: left for onnx2torch to refuse
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(kernel)
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
        begins, ends = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*keep, helper.make_attribute("pads", begins + ends)])
    return model


def _drop_attribute(node, name: str, value: int) -> None:
    keep = [a for a in node.attribute if not (a.name == name and a.i == value)]
    del node.attribute[:]
    node.attribute.extend(keep)


def check(converted: Converted, path: Path, sample: np.ndarray, requested: str) -> float:
    """Largest |torch - onnxruntime| over all outputs on `sample`, relative to each output's
    magnitude (at least 1); a conversion that changes the model's results is refused."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: sample})
    with torch.no_grad():
        got = converted.module(torch.from_numpy(sample))
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    worst = 0.0
    for out, want, have in zip(session.get_outputs(), expected, got):
        diff = float(np.abs(want - have.numpy()).max()) / max(float(np.abs(want).max()), 1.0)
        if diff > TOLERANCE:
            raise ToolchainError(f"{requested}: onnx2torch's conversion differs from "
                                 f"onnxruntime on output {out.name} (max |diff| {diff:.2g} of its "
                                 "range); use --format onnx")
        worst = max(worst, diff)
    return worst


# ---------------------------------------------------------------- static shapes


def _reshape(module, shape):
    return _Reshape([int(d) for d in shape.tolist()])


def _split(module, split=None):
    if split is None:
        return module
    return _Split([int(s) for s in split.tolist()], module.axis)


def _slice(module, starts, ends, axes=None, steps=None):
    from onnx2torch.node_converters.slice import _get_slices

    return _Slice(*_get_slices(starts.tolist(), ends.tolist(), axes, steps))


def _resize(module, roi=None, scales=None, sizes=None):
    if (not module.ignore_roi and roi is not None and roi.numel()) or (
            module.onnx_mode not in _Resize.MODES):
        return module  # crop-and-resize, or a mode torch lacks: left to onnx2torch's own
    size = [int(s) for s in sizes.tolist()[2:]] if sizes is not None and sizes.numel() else None
    scale = ([float(s) for s in scales.tolist()[2:]] if scales is not None and scales.numel()
             and size is None else None)
    return _Resize(module.onnx_mode, module.align_corners, size, scale)


def _flatten(module):
    axis = getattr(module, "axis", getattr(module, "start_dim", 1))
    if axis < 1 or getattr(module, "end_dim", -1) != -1:
        return module
    return _Flatten(axis)


# onnx2torch module type -> builder of an equivalent module taking only the data input, given
# the module and its constant inputs (real tensors, None where absent).
STATIC = {"OnnxReshape": _reshape, "OnnxSplit13": _split, "OnnxSlice": _slice,
          "OnnxResize": _resize, "OnnxFlatten": _flatten, "Flatten": _flatten}


def _make_static(graph_module) -> None:
    """Replace each STATIC module whose extra inputs are all constants (get_attr buffers)."""
    import torch.fx

    buffers = dict(graph_module.named_buffers())
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        build = STATIC.get(type(module).__name__)
        if build is None or not node.args:
            continue
        extra = list(node.args[1:])
        keys = list(node.kwargs)
        constants = extra + [node.kwargs[k] for k in keys]
        if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in constants):
            continue
        values = [buffers[a.target] for a in extra]
        named = {k: buffers[node.kwargs[k].target] for k in keys}
        replacement = build(module, *values, **named)
        if replacement is module:
            continue
        setattr(graph_module, node.target, replacement)
        node.args, node.kwargs = node.args[:1], {}
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()


class _Reshape(torch.nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)]
        if self.shape and self.shape[0] == 0:  # the batch, whatever it is: -1 there, and any
            rest = dims[1:]                     # other -1 resolved from the concrete sizes
            if -1 in rest:
                known = math.prod(d for d in rest if d != -1)
                rest[rest.index(-1)] = math.prod(x.shape[1:]) // known
            dims = [-1, *rest]
        return torch.reshape(x, dims)


class _Flatten(torch.nn.Module):
    """ONNX Flatten (axis >= 1): (everything before axis, everything from it)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.reshape(x, (-1, math.prod(x.shape[self.axis:])))


class _Split(torch.nn.Module):
    def __init__(self, sizes: list[int], axis: int) -> None:
        super().__init__()
        self.sizes, self.axis = sizes, axis

    def forward(self, x):
        return torch.split(x, self.sizes, dim=self.axis)


class _Slice(torch.nn.Module):
    def __init__(self, flip: list, positive: list, negative: list) -> None:
        super().__init__()
        self.flip, self.positive, self.negative = flip, tuple(positive), tuple(negative)

    def forward(self, x):
        if self.flip:
            x = torch.flip(x, dims=self.flip)
        if self.positive:
            x = x[self.positive]
        return x[self.negative] if self.negative else x


class _Resize(torch.nn.Module):
    MODES = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}

    def __init__(self, mode: str, align_corners: bool | None, size: list[int] | None,
                 scale: list[float] | None) -> None:
        super().__init__()
        self.mode, self.align_corners = self.MODES[mode], align_corners
        self.size, self.scale = size, scale

    def forward(self, x):
        return torch.nn.functional.interpolate(x, size=self.size, scale_factor=self.scale,
                                               mode=self.mode, align_corners=self.align_corners)


# ---------------------------------------------------------------- onnx2torch import


def _import_onnx2torch(requested: str):
    """onnx2torch, with a stand-in torchvision for its import when none is installed."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("onnx2torch") is None:
        raise ToolchainError(f"{requested}: TFLite from an ONNX model needs onnx2torch (not "
                             "installed); install it with: pip install --no-deps "
                             "onnx2torch==1.5.15 -- or use --format onnx")
    with _torchvision_stand_in():
        import onnx2torch
    return onnx2torch


@contextlib.contextmanager
def _torchvision_stand_in():
    """A `torchvision` module for the length of onnx2torch's import only, so no other library
    ever sees it; its two functions are never called (convert refuses NMS/RoiAlign graphs)."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def unavailable(*args, **kwargs):
        raise ToolchainError("this ONNX op needs torchvision, which is not installed")

    fake = types.ModuleType("torchvision")
    fake.ops = types.ModuleType("torchvision.ops")
    fake.ops.nms = fake.ops.roi_align = fake.ops.box_convert = unavailable
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = fake, fake.ops
    try:
        yield
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("onnx2torch")
    except importlib.metadata.PackageNotFoundError:
        return "?"
