"""Exporters, one module per format, behind one small interface.

Each format module has `build(target, ctx) -> Artifact`. What each format can produce is
declared here as data, so a bad `--format`/precision pair is refused before any heavy work and
`edge-opt profiles` can tell what runs where without importing torch, OpenVINO or TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from device_profiles import FORMAT_BACKEND, Target
from edge_sdk.manifest import InputSpec, OutputSpec
from optimize.calibration import ImageSet
from optimize.errors import ToolchainError
from optimize.intake import SourceModel


@dataclass(frozen=True)
class FormatInfo:
    name: str
    precisions: tuple[str, ...]
    module: str

    @property
    def backend(self) -> str:
        """The edge_sdk backend that runs this format."""
        return FORMAT_BACKEND[self.name]


FORMATS: dict[str, FormatInfo] = {
    "onnx": FormatInfo("onnx", ("fp32", "fp16", "int8", "int4"), "optimize.formats.onnx"),
    "openvino": FormatInfo("openvino", ("fp32", "fp16", "int8", "int4"),
                           "optimize.formats.openvino"),
    "tflite": FormatInfo("tflite", ("fp32", "fp16", "int8", "int4"), "optimize.formats.tflite"),
}


@dataclass
class BuildContext:
    """Everything an exporter may use; shared by all targets of one `edge-opt export` run."""

    source: SourceModel
    input_spec: InputSpec
    outputs: tuple[OutputSpec, ...]
    workdir: Path
    calibration: ImageSet | None = None
    calibration_method: str = "minmax"
    exclude_nodes: tuple[str, ...] = ()
    bias_correction: bool = True
    torch_module: object | None = None  # the nn.Module, when the source was PyTorch
    batch: int = 1  # --batch N: formats that fix shapes at conversion keep batch 1..N open
    cache: dict = field(default_factory=dict)  # e.g. a converted FP32 model, reused per target
    counter: list = field(default_factory=lambda: [0])  # shared by copies made with replace()

    def unique_path(self, stem: str, suffix: str) -> Path:
        """A fresh file name in the work folder: artifacts of earlier builds stay intact."""
        self.counter[0] += 1
        return self.workdir / f"{stem}-{self.counter[0]}{suffix}"


@dataclass
class Artifact:
    """What an exporter produced: files for the bundle and how to describe them."""

    files: dict[str, Path]  # manifest key ("model", "weights") -> file to copy into the bundle
    record: dict | None = None  # what was done (quantization method, tool, ...)
    runtime_options: dict = field(default_factory=dict)  # backend settings for the manifest
    inputs: tuple[InputSpec, ...] | None = None  # when the format changes input dtype/quant
    outputs: tuple[OutputSpec, ...] | None = None
    task_params: dict = field(default_factory=dict)  # decoder parameters fitted to this model


def check_supported(target: Target) -> None:
    info = FORMATS.get(target.format)
    if info is None:
        have = ", ".join(FORMATS)
        raise ToolchainError(f"{target.requested}: the {target.format} exporter is not part of "
                             f"this edge-opt version (it writes {have}); add --format onnx")
    if target.precision not in info.precisions:
        ok = ", ".join(info.precisions)
        raise ToolchainError(f"{target.requested}: {target.format} cannot hold "
                             f"{target.precision} here (it takes {ok}); pick another --format")


def build(target: Target, ctx: BuildContext) -> Artifact:
    module = importlib.import_module(FORMATS[target.format].module)
    return module.build(target, ctx)
