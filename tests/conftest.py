"""Shared fixtures: real data shipped in examples/data, a real EfficientNet-Lite0 export, and a
runner for the command-line tools (run as subprocesses, exactly as a user would)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
EFFNET = f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build"
EFFNET_FLAGS = ["--input-shape", "1x3x224x224", "--resize", "center-crop", "--mean", "127",
                "--std", "128", "--labels", str(DATA / "imagenet_labels.txt")]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> CliResult:
    """Run `edge-opt` / `edge-run` / `edge-fleet` through their entry modules."""
    module = {"edge-opt": "optimize.cli", "edge-run": "edge_sdk.cli", "edge-fleet": "sync.fleet"}
    proc = subprocess.run([sys.executable, "-m", module[tool], *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def effnet_bundles(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (real ImageNet weights) exported through the CLI to five ONNX
    targets."""
    out = tmp_path_factory.mktemp("effnet")
    result = run_cli("edge-opt", "export", EFFNET, *EFFNET_FLAGS,
                     "--target", "x86-fp32", "--target", "x86-fp16", "--target", "x86-int8",
                     "--target", "jetson-int8", "--target", "x86-int4", "--format", "onnx",
                     "--max-drop", "100", "--calib", DATA / "calib", "--eval", DATA / "eval",
                     "--runs", "10",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    return out
