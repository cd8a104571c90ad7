"""Pose, semantic-map and instance-mask decoders.

Pose and semantic maps run on real models' FP32 outputs (onnxruntime) for real photos:
examples/models/yolo11n_pose.onnx (Ultralytics YOLO11n-pose) and selfie_segmentation.onnx
(MediaPipe Selfie Segmentation); `make test` fetches both (examples/models/README.md). No
trained YOLO*-seg checkpoint could be obtained offline, so the instance-mask decoder is checked
on hand-made outputs of the Ultralytics layout only.
"""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge_sdk.annotate import annotate
from edge_sdk.decoders import build_decoder
from edge_sdk.errors import ManifestError
from edge_sdk.manifest import InputSpec
from edge_sdk.preprocess import FrameTransform, Preprocessor
from edge_sdk.results import Detections, Segmentation
from tests.conftest import DATA, ROOT
from tests.edge_sdk.yolo_seg_outputs import seg_outputs

MODELS = ROOT / "examples" / "models"
PHOTO = DATA / "calib" / "messi5.jpg"  # a footballer mid-kick, people in the stands behind
PORTRAIT = DATA / "calib" / "skimage_astronaut.jpg"  # one person, upper body, 512 x 512


def _session(name: str) -> ort.InferenceSession:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} missing: `make {path.relative_to(ROOT)}` fetches it")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, frame: np.ndarray, resize: str):
    spec = session.get_inputs()[0]
    tensor, transform = Preprocessor(InputSpec(spec.name, tuple(spec.shape), resize=resize))(
        frame)
    return session.run(None, {spec.name: tensor}), transform


@pytest.fixture(scope="module")
def pose_model() -> ort.InferenceSession:
    return _session("yolo11n_pose")


def _pose(session, frame):
    outputs, transform = _run(session, frame, "letterbox")
    decoder = build_decoder("yolov8-pose", {"num_classes": 1, "kpt_shape": [17, 3]},
                            ("person",))
    assert decoder.task == "pose"
    return decoder(outputs, transform)


def test_pose_finds_the_player_with_his_keypoints_inside_his_box(pose_model):
    frame = cv2.imread(str(PHOTO))
    dets = _pose(pose_model, frame)
    assert len(dets) >= 1 and dets.labels[0] == "person" and dets.scores[0] > 0.8
    kpts = dets.keypoints
    assert kpts.shape == (len(dets), 17, 3) and kpts.dtype == np.float32
    x1, y1, x2, y2 = dets.xyxy[0]
    assert (x2 - x1) * (y2 - y1) > 0.4 * frame.shape[0] * frame.shape[1]  # he fills the photo
    seen = kpts[0][kpts[0, :, 2] > 0.5]
    assert len(seen) >= 12  # a player in full view: most of his 17 joints are seen
    margin = 4
    assert np.all((seen[:, 0] >= x1 - margin) & (seen[:, 0] <= x2 + margin)
                  & (seen[:, 1] >= y1 - margin) & (seen[:, 1] <= y2 + margin))
    nose, ankles = kpts[0, 0], kpts[0, 15:17]
    assert nose[1] < ankles[:, 1].min()  # head above feet: the joints are in their places
    line = json.loads(json.dumps(dets.to_dict()))
    assert np.asarray(line["keypoints"]).shape == (len(dets), 17, 3)


def test_pose_keypoints_follow_the_frame_geometry(pose_model):
    """A mirrored photo gives mirrored keypoints (left and right joints swapped): the
    keypoints are mapped back through the letterbox into frame pixels."""
    frame = cv2.imread(str(PHOTO))
    w = frame.shape[1]
    a, b = _pose(pose_model, frame), _pose(pose_model, frame[:, ::-1].copy())
    np.testing.assert_allclose(b.xyxy[0, [2, 0]], w - a.xyxy[0, [0, 2]], atol=6)
    swap = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # COCO left <-> right
    ka, kb = a.keypoints[0], b.keypoints[0][swap]
    both = (ka[:, 2] > 0.5) & (kb[:, 2] > 0.5)
    assert both.sum() >= 10
    assert np.median(np.abs(kb[both, 0] - (w - ka[both, 0]))) < 6
    assert np.median(np.abs(kb[both, 1] - ka[both, 1])) < 6


def test_pose_annotation_draws_the_skeleton(pose_model):
    frame = cv2.imread(str(PHOTO))
    dets = _pose(pose_model, frame)
    plain = annotate(frame, Detections(dets.xyxy, dets.scores, dets.class_ids))
    drawn = annotate(frame, dets)
    x, y = np.round(dets.keypoints[0, 0, :2]).astype(int)  # the nose gets a dot
    assert np.any(drawn[y, x] != plain[y, x])


@pytest.mark.parametrize(("layout", "shape", "error"), [
    ([17, 3], (1, 57, 10), "C = 1"),
    ([17, 3], (56, 10), "(1, 4+C+51, N)"),
    ([17, 4], (1, 56, 10), "kpt_shape must be"),
])
def test_pose_decoder_refuses_what_it_cannot_read(layout, shape, error):
    with pytest.raises(ManifestError, match=error.replace("(", r"\(").replace(")", r"\)")
                       .replace("+", r"\+")):
        decoder = build_decoder("yolov8-pose", {"num_classes": 1, "kpt_shape": layout})
        decoder([np.zeros(shape, np.float32)], FrameTransform(1.0, 1.0))


@pytest.fixture(scope="module")
def selfie() -> ort.InferenceSession:
    return _session("selfie_segmentation")


def test_semantic_map_paints_the_person_in_frame_pixels(selfie):
    frame = cv2.imread(str(PHOTO))
    outputs, transform = _run(selfie, frame, "stretch")
    seg = build_decoder("semantic-map", {}, ("background", "person"))(outputs, transform)
    assert isinstance(seg, Segmentation) and seg.class_map.shape == frame.shape[:2]
    # the same map resized by hand (stretch: the map covers the whole frame)
    by_hand = cv2.resize(outputs[0][0, 0], frame.shape[1::-1]) > 0.5
    assert np.mean((seg.class_map == 1) == by_hand) > 0.995
    person = _pose(_session("yolo11n_pose"), frame).xyxy[0].astype(int)
    inside = seg.class_map[person[1]:person[3], person[0]:person[2]]
    assert inside.mean() > 0.25 and seg.class_map.mean() < 0.5  # he is painted, not the rest
    summary = seg.to_dict()
    assert summary["mask_shape"] == list(frame.shape[:2])
    assert {c["label"] for c in summary["classes"]} == {"background", "person"}
    assert sum(c["pixels"] for c in summary["classes"]) == frame.shape[0] * frame.shape[1]
    tinted = annotate(frame, seg)
    assert np.any(tinted[seg.class_map == 1] != frame[seg.class_map == 1])


def test_semantic_map_layouts_and_class_axis_agree(selfie):
    """A two-class [1, 2, H, W] map (background, person) gives what the probability map gives;
    a channels-last copy gives the same; a letterboxed input maps back onto the frame."""
    frame = cv2.imread(str(PORTRAIT))[:, 64:]  # 448 x 512: the letterbox pads the sides
    outputs, transform = _run(selfie, frame, "letterbox")
    prob = outputs[0]
    one = build_decoder("semantic-map", {})([prob], transform).class_map
    two_maps = np.concatenate([1.0 - prob, prob], axis=1)
    two = build_decoder("semantic-map", {})([two_maps], transform).class_map
    last = build_decoder("semantic-map", {})([two_maps.transpose(0, 2, 3, 1)], transform)
    assert one.shape == frame.shape[:2]
    assert np.mean(one == two) > 0.995 and np.array_equal(two, last.class_map)
    stretched = build_decoder("semantic-map", {})(*_run(selfie, frame, "stretch")).class_map
    assert np.mean(one == stretched) > 0.95  # same person, other geometry


def test_semantic_map_refuses_a_vector():
    with pytest.raises(ManifestError, match=r"\[1, C, H, W\]"):
        build_decoder("semantic-map", {})([np.zeros((1, 10), np.float32)],
                                          FrameTransform(1.0, 1.0))


@pytest.mark.parametrize(("shape", "input_hw", "words"), [
    ((1, 1, 1000), (224, 224), "a classifier's: use --task classify"),
    ((1, 1000, 1, 1), (224, 224), "a classifier's: use --task classify"),
    ((1, 1, 1000), None, "a classifier's: use --task classify"),
    ((1, 5, 8400), (640, 640), "a detector's per-anchor rows: use --task detect"),
    ((1, 3, 40, 20), (640, 640), "use --task raw"),
])
def test_semantic_map_refuses_what_is_not_a_map_of_the_input(shape, input_hw, words):
    """Scores a classifier or detector gives were read as a 1 x 1000 or 5 x 8400 'map'."""
    h, w = input_hw or (0, 0)
    with pytest.raises(ManifestError, match=re.escape(words)):
        build_decoder("semantic-map", {})([np.zeros(shape, np.float32)],
                                          FrameTransform(1.0, 1.0, input_w=w, input_h=h))


@pytest.mark.parametrize(("shape", "input_hw"), [
    ((1, 1, 160, 160), (640, 640)),  # stride 4
    ((1, 21, 65, 65), (513, 513)),  # DeepLab: stride 8 on an odd size
    ((1, 12, 20), (360, 640)),  # stride 32, rounded up
    ((1, 25, 19, 2), (800, 608)),  # channels last
])
def test_semantic_map_reads_maps_at_any_stride(shape, input_hw):
    h, w = input_hw
    seg = build_decoder("semantic-map", {})([np.zeros(shape, np.float32)],
                                            FrameTransform(1.0, 1.0, input_w=w, input_h=h))
    assert seg.class_map.shape == input_hw


def test_instance_masks_from_prototypes_land_on_the_frame():
    """Shapes only (hand-made outputs): masks are coefficient . prototypes, cut to the box and
    mapped through the preprocessing onto a 128 x 96 frame stretched to the 64 x 64 input."""
    transform = FrameTransform(0.5, 64 / 96, frame_w=128, frame_h=96, input_w=64, input_h=64)
    decoder = build_decoder("yolov8-seg", {"num_classes": 3})
    assert decoder.task == "segment"
    dets = decoder(seg_outputs(), transform)
    assert dets.class_ids.tolist() == [2, 0] and dets.masks.shape == (2, 96, 128)
    a, b = dets.masks
    assert a[:, :60].mean() > 0.97 and not a[:, 68:].any()  # left half of the frame
    assert b[:44].mean() > 0.97 and not b[52:].any()  # top half
    polygons = dets.to_dict()["mask_polygons"]
    assert len(polygons) == 2 and max(p[0] for p in polygons[0]) < 68
    kept = dets[np.array([False, True])]
    assert kept.masks.shape == (1, 96, 128)  # masks follow their boxes when filtered


def test_instance_decoder_refuses_mismatched_outputs():
    det, proto = seg_outputs()
    with pytest.raises(ManifestError, match="yolov8-seg: expected outputs"):
        build_decoder("yolov8-seg", {})([det], FrameTransform(1.0, 1.0))
    with pytest.raises(ManifestError, match="mask coefficients"):
        build_decoder("yolov8-seg", {"num_classes": 5})([det, proto], FrameTransform(1.0, 1.0))
