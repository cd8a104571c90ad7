"""ONNX for onnxruntime and TensorRT: the FP32 graph, or one precision step applied to it."""

from __future__ import annotations

from device_profiles import Target
from optimize.formats import Artifact, BuildContext
from optimize.steps import StepContext, run_step


def build(target: Target, ctx: BuildContext) -> Artifact:
    if target.precision == "fp32":
        return Artifact(files={"model": ctx.source.onnx_path})
    out = ctx.workdir / f"{target.name}.onnx"
    step_ctx = StepContext(input_name=ctx.source.input_name, scheme=target.scheme,
                           calibration=ctx.calibration, calibration_method=ctx.calibration_method,
                           exclude_nodes=ctx.exclude_nodes)
    record = run_step(target.precision, ctx.source.onnx_path, out, step_ctx)
    return Artifact(files={"model": out}, record=record)
