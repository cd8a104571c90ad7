"""Precision steps: each takes an FP32 ONNX file and writes one at another precision.

Every step is a module with `run(src, dst, ctx) -> dict` (a record of what it did, kept in the
manifest) and imports its heavy libraries inside `run`, so `edge-opt --help` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from optimize.calibration import ImageSet


@dataclass
class StepContext:
    """What a step may need beyond the two file paths."""

    input_name: str
    scheme: dict | None = None  # from device_profiles/schemes.yaml
    calibration: ImageSet | None = None
    calibration_method: str = "minmax"
    exclude_nodes: tuple[str, ...] = ()
    compact: bool = True  # shorten tensor names (False keeps them, for sensitivity analysis)
    keep_prepared: Path | None = None  # where to keep the pre-processed float model
    bias_correction: bool = True  # int8: correct biases for the weight rounding
    cache: dict = field(default_factory=dict)  # shared by the builds of one run (e.g. ranges)


# precision -> step module; fp32 needs no step
STEPS = {"fp16": "optimize.steps.fp16", "int8": "optimize.steps.int8",
         "int4": "optimize.steps.int4"}


def run_step(precision: str, src: Path, dst: Path, ctx: StepContext) -> dict:
    module = importlib.import_module(STEPS[precision])
    return module.run(src, dst, ctx)
