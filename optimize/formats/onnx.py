"""ONNX for onnxruntime and TensorRT: the FP32 graph, or one precision step applied to it."""

from __future__ import annotations

from pathlib import Path

from device_profiles import Target
from optimize.formats import Artifact, BuildContext
from optimize.steps import StepContext, run_step


def build(target: Target, ctx: BuildContext) -> Artifact:
    if target.precision == "fp32":
        return Artifact(files={"model": ctx.source.onnx_path})
    path, record = quantized_onnx(target.precision, target.scheme, ctx)
    return Artifact(files={"model": path}, record=record)


def quantized_onnx(precision: str, scheme: dict | None, ctx: BuildContext) -> tuple[Path, dict]:
    """The ONNX model at `precision` in `scheme`, computed once per run and shared, so targets
    of other formats (OpenVINO from Q/DQ) reuse the same calibration pass."""
    key = ("onnx", precision, None if scheme is None else scheme["name"], ctx.exclude_nodes,
           ctx.calibration_method, ctx.bias_correction)
    if key not in ctx.cache:
        out = ctx.unique_path(f"onnx-{precision}", ".onnx")
        step_ctx = StepContext(input_name=ctx.source.input_name, scheme=scheme,
                               calibration=ctx.calibration,
                               calibration_method=ctx.calibration_method,
                               exclude_nodes=ctx.exclude_nodes,
                               bias_correction=ctx.bias_correction, cache=ctx.cache)
        ctx.cache[key] = (out, run_step(precision, ctx.source.onnx_path, out, step_ctx))
    return ctx.cache[key]
