"""Shared fixtures: real data shipped in examples/data, a real EfficientNet-Lite0 export, and a
runner for the command-line tools (run as subprocesses, exactly as a user would)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
# The longest modules first (`make test`'s --durations, quiet host: PP-OCR's export ~15 min, the
# PicoDet user-decoder export ~11, the YOLO11n exports ~4, YOLO11n to TFLite ~3), so that neither
# of its two pytest-xdist workers (--dist loadfile, in this order) ends alone on one of them.
LONGEST_FIRST = ("optimize/test_real_tasks.py", "optimize/test_user_decoder.py",
                 "optimize/test_real_text_jetson.py",
                 "optimize/test_real_detector.py", "optimize/test_real_split_head.py",
                 "optimize/test_real_text_boxes.py", "optimize/test_onnx_to_tflite.py",
                 "optimize/test_tflite.py")
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


PROGRESS = ("  ", "edge-run: loading ", "edge-run: loaded ")


def error_lines(stderr: str) -> list[str]:
    """The error a run ended with: the non-blank lines of stderr after the progress lines a
    run without -q writes first (edge-opt's start with two spaces, edge-run's model load with
    "edge-run: loading"). Anything else (a usage line, a traceback, a library's chatter)
    counts as part of the error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if not line.startswith(PROGRESS)),
                 len(lines))
    return lines[first:]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(ROOT / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every module keeps its own order


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """A folder built once per test run, also when pytest-xdist's workers both need it (each
    worker has its own session): the first to ask builds it under a file lock, the other waits
    and reuses it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    out = root / name
    with FileLock(f"{out}.lock"):
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def effnet_bundles(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (real ImageNet weights) exported through the CLI to five ONNX
    targets."""

    def build(out: Path) -> None:
        result = run_cli("edge-opt", "export", EFFNET, *EFFNET_FLAGS,
                         "--target", "x86-fp32", "--target", "x86-fp16", "--target", "x86-int8",
                         "--target", "jetson-int8", "--target", "x86-int4", "--format", "onnx",
                         "--max-drop", "100", "--calib", DATA / "calib", "--eval", DATA / "eval",
                         "--runs", "10",
                         "--out", out)
        assert result.returncode == 0, result.stderr

    return build_once(tmp_path_factory, "effnet", build)
