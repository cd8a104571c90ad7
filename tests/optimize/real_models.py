"""Helpers of the real-model export tests (test_real_tasks.py, test_real_detector.py,
test_real_text_jetson.py): the models `make test` fetches, `edge-opt export` and `edge-run`
as a user runs them. The `pages` fixture is in tests/optimize/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

MODELS = ROOT / "examples" / "models"


def model_path(name: str) -> Path:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} missing: `make {path.relative_to(ROOT)}` fetches it")
    return path


def export(model: Path, out: Path, *args) -> object:
    return run_cli("edge-opt", "export", model, "--runs", "3", "--quiet", "--out", out, *args,
                   timeout=1500)


def run_bundle(bundle: Path, image: Path, jsonl: Path) -> dict:
    """The bundle's result on one image, from `edge-run` as a device runs it (in its own
    process: OpenVINO beside torch and nncf in the test process has crashed it)."""
    result = run_cli("edge-run", bundle, "--source", image, "--jsonl", jsonl, "--tracker",
                     "none", "--quiet")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in jsonl.read_text().splitlines() if '"frame"' in x]
    return line


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def text_flags(pages: dict[str, Path]) -> tuple:
    """PP-OCRv4's input and preprocessing as RapidOCR feeds it (BGR, (x - 127.5) / 127.5)."""
    return ("--input-shape", "1x3x640x640", "--color", "BGR", "--mean", "127.5", "--std",
            "127.5", "--calib", pages["calib"], "--eval", pages["eval"])


# YOLO11n's six head convolutions: per stride 8/16/32, the box distributions (cv2, 4 x 16
# bins) and the class logits (cv3).
YOLO_HEAD_CONVS = tuple(f"/model.23/cv{branch}.{level}/cv{branch}.{level}.2/Conv_output_0"
                        for level in range(3) for branch in (2, 3))


def cut_yolo_head(src: Path, dst: Path) -> Path:
    """YOLO11n with its head cut where NPU toolchains cut it (Rockchip's rknn_model_zoo,
    Hailo): six outputs, box-distribution and class logits per stride, no DFL, no concat. A
    multi-output head no built-in decoder reads; onnx's extractor leaves the outputs' symbolic
    dims (`floor(2.0*((height - 1)//2) + 1)...`) as such a cut model carries them."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    onnx.save(Extractor(model).extract_model([model.graph.input[0].name],
                                             list(YOLO_HEAD_CONVS)), str(dst))
    return dst
