"""Detection decoders against hand-computed outputs, one layout at a time.

Every case uses the same letterbox: a 640x480 frame in a 320x320 input is scaled by 0.5 and
padded by 40 rows at the top, so frame = ((x - 0) / 0.5, (y - 40) / 0.5). The input box
(cx 160, cy 160, w 100, h 50) = xyxy (110, 135, 210, 185) lands at frame (220, 190, 420, 290).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.decoders import build_decoder, decoder_names
from edge_sdk.errors import ManifestError
from edge_sdk.manifest import InputSpec
from edge_sdk.preprocess import FrameTransform, Preprocessor

LETTERBOX = FrameTransform(0.5, 0.5, pad_x=0, pad_y=40, frame_w=640, frame_h=480, input_w=320,
                           input_h=320)
FRAME_BOX = [220, 190, 420, 290]


def decode(name, outputs, labels=(), **params):
    decoder = build_decoder(name, params, labels)
    assert decoder.task == "detect"
    return decoder([np.asarray(o, np.float32) for o in outputs], LETTERBOX)


def check(dets, xyxy, scores, class_ids):
    np.testing.assert_allclose(dets.xyxy, np.asarray(xyxy, np.float32).reshape(-1, 4), atol=1e-4)
    np.testing.assert_allclose(dets.scores, scores, atol=1e-6)
    assert dets.class_ids.tolist() == class_ids
    assert dets.xyxy.dtype == np.float32 and dets.class_ids.dtype == np.int64


def test_letterbox_is_the_one_the_preprocessor_makes():
    spec = InputSpec(name="images", shape=(1, 3, 320, 320), resize="letterbox")
    _, transform = Preprocessor(spec)(np.zeros((480, 640, 3), np.uint8))
    assert transform == LETTERBOX


def test_registered_names():
    assert {"yolov5", "yolov8", "yolo-nms", "ssd"} <= set(decoder_names())


# --- yolov5: (1, N, 5+C), score = objectness * class probability -------------------------
# row 0: the reference box, obj 0.9 * class-1 0.8 = 0.72
# row 1: shifted 4 px right (IoU 4800 / 5200 = 0.92 with row 0), class 1, 0.8 * 0.75 = 0.6
# row 2: same place as row 1, class 0, 0.9 * 0.5 = 0.45: survives class-aware NMS only
# row 3: 0.2 * 0.9 = 0.18 < 0.25: dropped by the threshold
V5 = [
    [
        [160, 160, 100, 50, 0.9, 0.1, 0.8],
        [164, 160, 100, 50, 0.8, 0.05, 0.75],
        [164, 160, 100, 50, 0.9, 0.5, 0.1],
        [100, 100, 20, 20, 0.2, 0.9, 0.0],
    ]
]
SHIFTED = [228, 190, 428, 290]


@pytest.mark.parametrize(
    ("params", "xyxy", "scores", "class_ids"),
    [
        ({}, [FRAME_BOX, SHIFTED], [0.72, 0.45], [1, 0]),
        ({"class_agnostic": True}, [FRAME_BOX], [0.72], [1]),
        ({"iou_threshold": 0.95}, [FRAME_BOX, SHIFTED, SHIFTED], [0.72, 0.6, 0.45], [1, 1, 0]),
        ({"conf_threshold": 0.1}, [FRAME_BOX, SHIFTED, [180, 100, 220, 140]],
         [0.72, 0.45, 0.18], [1, 0, 0]),
        ({"max_detections": 1}, [FRAME_BOX], [0.72], [1]),
        ({"conf_threshold": 0.8}, [], [], []),
    ],
)  # fmt: skip
def test_yolov5(params, xyxy, scores, class_ids):
    check(decode("yolov5", [V5], **params), xyxy, scores, class_ids)


def test_labels_follow_class_ids_and_unknown_ids_get_their_number():
    dets = decode("yolov5", [V5], labels=("person",))
    assert dets.labels == ("1", "person")
    assert decode("yolov5", [V5]).labels is None


# --- yolov8: (1, 4+C, N), no objectness; score = best class score -----------------------
# box 0: reference box, class 1 at 0.9; box 1: xyxy (-10, 50, 30, 70) -> frame (-20, 20, 60, 60),
# clipped to x >= 0; box 2: best class 0.2 < 0.25, dropped.
V8_ROWS = np.array(
    [
        [160, 160, 100, 50, 0.3, 0.9],
        [10, 60, 40, 20, 0.7, 0.1],
        [200, 200, 10, 10, 0.2, 0.1],
    ],
    np.float32,
)
V8_EXPECTED = ([FRAME_BOX, [0, 20, 60, 60]], [0.9, 0.7], [1, 0])


ANCHORS_320 = 2100  # rows of a YOLOv8 head for the 320x320 input: 40x40 + 20x20 + 10x10
V8_HEAD = np.zeros((ANCHORS_320, 6), np.float32)
V8_HEAD[:3] = V8_ROWS


@pytest.mark.parametrize(
    "layout",
    [V8_HEAD.T[None], V8_HEAD[None]],
    ids=["(1, 4+C, N)", "(1, N, 4+C) transposed"],
)
def test_yolov8_both_layouts(layout):
    check(decode("yolov8", [layout], num_classes=2), *V8_EXPECTED)


def test_score_shift_moves_scores_on_the_logit_scale_and_the_threshold_with_them():
    """edge-opt's score calibration of an int8 detector: sigmoid(logit(p) + shift) for every
    score, so a box scored 0.2 by int8 (0.1 below FP32 on the logit scale, say) is kept."""
    shift = float(np.log(0.3 / 0.7) - np.log(0.2 / 0.8))  # moves 0.2 to exactly 0.3
    dets = decode("yolov8", [V8_ROWS.T[None]], num_classes=2, score_shift=shift)
    moved = 1 / (1 + np.exp(-(np.log(np.array([0.9, 0.7, 0.3]) / (1 - np.array([0.9, 0.7, 0.3])))
                              + np.array([shift, shift, 0]))))
    check(dets, [FRAME_BOX, [0, 20, 60, 60], [390, 310, 410, 330]], moved, [1, 0, 0])
    down = decode("yolov8", [V8_ROWS.T[None]], num_classes=2, score_shift=-3.0)
    check(down, [FRAME_BOX], [1 / (1 + np.exp(-(np.log(9.0) - 3.0)))], [1])


def test_yolov8_layout_guessed_without_num_classes_for_real_sizes():
    # 2100 anchors, 2 classes: the short axis (6) is the channel axis, either way round.
    check(decode("yolov8", [V8_HEAD.T[None]]), *V8_EXPECTED)
    check(decode("yolov8", [V8_HEAD[None]]), *V8_EXPECTED)


@pytest.mark.parametrize(("name", "params"), [("yolov8", {}), ("yolov8", {"num_classes": 2}),
                                               ("yolov5", {})])
def test_nms_rows_given_a_decoder_before_nms_are_refused_naming_yolo_nms(name, params):
    """A model exported with NMS in the graph gives (1, 300, 6) = x1, y1, x2, y2, score,
    class; yolov8 read it as a two-class head of 300 anchors (yolov5 as a one-class one)
    and reported boxes of nonsense."""
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [110, 135, 210, 185, 0.9, 0]
    with pytest.raises(ManifestError, match=r"\(1, 300, 6\) looks like NMS rows .*"
                                            r"use decoder yolo-nms$"):
        decode(name, [rows], **params)


# --- yolo-nms: NMS in the graph; rows are final, padded with zeros ------------------------
def test_yolo_nms_end2end_rows_are_not_suppressed_again():
    out = np.zeros((1, 5, 6), np.float32)
    out[0, 0] = [110, 135, 210, 185, 0.9, 2]
    out[0, 1] = [114, 135, 214, 185, 0.8, 2]  # IoU 0.92 with row 0, same class: kept anyway
    out[0, 2] = [0, 40, 10, 50, 0.3, 0]
    check(
        decode("yolo-nms", [out]),
        [FRAME_BOX, SHIFTED, [0, 0, 20, 20]],
        [0.9, 0.8, 0.3],
        [2, 2, 0],
    )
    check(decode("yolo-nms", [out], max_detections=1), [FRAME_BOX], [0.9], [2])


def test_yolo_nms_efficient_nms_outputs_use_only_num_dets_rows():
    num = np.array([[2]])
    boxes = np.array([[[110, 135, 210, 185], [0, 40, 10, 50], [1, 1, 2, 2], [3, 3, 4, 4]]])
    scores = np.array([[0.5, 0.95, 0.99, 0.99]])  # rows past num_dets are garbage
    classes = np.array([[3, 1, 7, 7]])
    check(
        decode("yolo-nms", [num, boxes, scores, classes]),
        [[0, 0, 20, 20], FRAME_BOX],
        [0.95, 0.5],
        [1, 3],
    )



@pytest.mark.parametrize(("labels", "params", "match"), [
    (("person",), {}, "class id 3, but the bundle names 1 class in its labels"),
    (("a", "b"), {"num_classes": 2}, "class id 3, but the bundle says num_classes=2"),
    ((), {"num_classes": 3}, "class id 3, but the bundle says num_classes=3"),
])  # fmt: skip
def test_yolo_nms_refuses_a_class_id_the_bundle_does_not_name(labels, params, match):
    """yolo-nms never checked class ids: labels.txt naming fewer classes than the model has
    gave results that mixed names and numbers ('person', '3'), with no word that the labels
    were not the model's."""
    out = np.zeros((1, 5, 6), np.float32)
    out[0, 0] = [110, 135, 210, 185, 0.9, 0]
    out[0, 1] = [0, 40, 10, 50, 0.6, 3]
    with pytest.raises(ManifestError, match=match + ".* one name per class"):
        decode("yolo-nms", [out], labels=labels, **params)
    out[0, 1, 4] = 0.1  # under the threshold: not a detection, whatever its class
    dets = decode("yolo-nms", [out], labels=labels, **params)
    assert dets.class_ids.tolist() == [0]
    assert dets.labels == (labels[:1] or None)
    out[0, 1] = [0, 40, 10, 50, 0.6, -1]
    with pytest.raises(ManifestError, match="class id -1"):
        decode("yolo-nms", [out], labels=labels, **params)


# --- ssd: normalized boxes (1, N, 4) + scores (1, N, C) -------------------------------------
# Normalized yxyx (0.25, 0.5, 0.5, 0.75) in a 320x320 input = xyxy (160, 80, 240, 160)
# -> frame (320, 80, 480, 240).
SSD_BOXES_YXYX = [[[0.25, 0.5, 0.5, 0.75], [0.25, 0.5, 0.5, 0.75], [0.0, 0.0, 0.1, 0.1]]]
SSD_SCORES_BG = [[[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.9, 0.05, 0.05]]]  # column 0: background


@pytest.mark.parametrize(
    ("params", "boxes", "scores", "xyxy", "expected_scores", "class_ids"),
    [
        # background dropped; ids count real classes; row 1 is class 0, so class-aware keeps it
        ({"background": True}, SSD_BOXES_YXYX, SSD_SCORES_BG,
         [[320, 80, 480, 240]] * 2, [0.7, 0.6], [1, 0]),
        ({"background": True, "class_agnostic": True}, SSD_BOXES_YXYX, SSD_SCORES_BG,
         [[320, 80, 480, 240]], [0.7], [1]),
        # no background: column 0 is class 0; rows 0 and 1 now differ in class (2 vs 1).
        # Row 2 lies in the top padding (0..32 px -> frame height 0): dropped
        ({}, SSD_BOXES_YXYX, SSD_SCORES_BG,
         [[320, 80, 480, 240], [320, 80, 480, 240]], [0.7, 0.6], [2, 1]),
        ({"box_format": "xyxy", "background": True},
         [[[0.5, 0.25, 0.75, 0.5]]], [[[0.1, 0.2, 0.7]]], [[320, 80, 480, 240]], [0.7], [1]),
    ],
)  # fmt: skip
def test_ssd(params, boxes, scores, xyxy, expected_scores, class_ids):
    dets = decode("ssd", [boxes, scores], input_hw=[320, 320], **params)
    check(dets, xyxy, expected_scores, class_ids)


def test_ssd_drops_zero_area_boxes_in_the_letterbox_padding():
    """Boxes in the padding (top: input y < 40, bottom: y > 280) become zero-height once mapped
    to the frame; they are not detections, and must not take a max_detections slot either."""
    boxes = [[[0.0, 0.2, 0.1, 0.4],      # top padding, best score
              [0.9, 0.2, 1.0, 0.4],      # bottom padding
              [0.5, 0.3, 0.5, 0.6],      # zero height inside the image
              [0.25, 0.5, 0.5, 0.75]]]   # the real box: frame (320, 80, 480, 240)
    scores = [[[0.95], [0.9], [0.85], [0.6]]]
    dets = decode("ssd", [boxes, scores], input_hw=[320, 320], max_detections=1)
    check(dets, [[320, 80, 480, 240]], [0.6], [0])
    everything = decode("ssd", [boxes, scores], input_hw=[320, 320])
    check(everything, [[320, 80, 480, 240]], [0.6], [0])


def test_ssd_accepts_outputs_in_either_order():
    a = decode("ssd", [SSD_BOXES_YXYX, SSD_SCORES_BG], input_hw=[320, 320], background=True)
    b = decode("ssd", [SSD_SCORES_BG, SSD_BOXES_YXYX], input_hw=[320, 320], background=True)
    np.testing.assert_array_equal(a.xyxy, b.xyxy)


# --- refusals: a manifest that does not fit the model says what was expected ---------------
@pytest.mark.parametrize(
    ("name", "params", "outputs", "match"),
    [
        ("yolov5", {}, [np.zeros((1, 4, 5))], r"\(1, N, 5\+C\)"),
        ("yolov5", {"num_classes": 3}, [V5], "num_classes=3"),
        ("yolov5", {}, [np.zeros((2, 4, 7))], r"\(1, N, 5\+C\)"),
        ("yolov8", {"num_classes": 5}, [V8_ROWS[None]], r"\(1, 9, N\)"),
        ("yolov8", {}, [np.zeros((1, 84))], r"\(1, 4\+C, N\)"),
        ("yolo-nms", {}, [np.zeros((1, 5, 6))] * 2, "got 2 outputs"),
        ("yolo-nms", {}, [np.zeros((1, 5, 4))], r"\(1, max_det, 6\)"),
        # raw heads before NMS (2100 anchors for the 320x320 input) read as NMS rows
        ("yolo-nms", {"num_classes": 1}, [np.zeros((1, 5, 2100))],
         r"before NMS, \(1, 4\+C, N\) with N = 2100 .* use decoder yolov8$"),
        ("yolo-nms", {"num_classes": 80}, [np.zeros((1, 6300, 85))], "use decoder yolov5$"),
        ("yolo-nms", {}, [np.zeros((1, 2100, 6))], "use decoder yolov8"),
        ("yolo-nms", {}, [np.zeros((1, 1)), np.zeros((1, 5, 4)), np.zeros((1, 5)),
                          np.zeros((1, 4))], "EfficientNMS"),
        ("ssd", {"input_hw": [320, 320]}, [np.zeros((1, 3, 4))], "2 outputs"),
        ("ssd", {"input_hw": [320, 320]}, [np.zeros((1, 3, 4)), np.zeros((1, 2, 3))],
         r"boxes \(1, N, 4\)"),
        ("ssd", {"input_hw": [320, 320], "num_classes": 3, "background": True},
         [SSD_BOXES_YXYX, SSD_SCORES_BG], "num_classes=3"),
    ],
)  # fmt: skip
def test_output_shape_mismatch_raises_manifest_error(name, params, outputs, match):
    with pytest.raises(ManifestError, match=match):
        decode(name, outputs, **params)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("yolov8", {"conf_threshold": 1.5}, "conf_threshold"),
        ("yolov8", {"iou_threshold": "high"}, "iou_threshold"),
        ("yolov5", {"max_detections": 0}, "max_detections"),
        ("yolov5", {"num_classes": 0}, "num_classes"),
        ("yolov8", {"class_agnostic": "yes"}, "class_agnostic"),
        ("yolov8", {"iou": 0.5}, "bad parameters"),
        ("yolov8", {"score_shift": 9.0}, "score_shift"),
        ("yolov8", {"score_shift": "0.3"}, "score_shift"),
        ("ssd", {}, "input_hw"),
        ("ssd", {"input_hw": [320]}, "input_hw"),
        ("ssd", {"input_hw": [320, 320], "box_format": "cxcywh"}, "box_format"),
    ],
)
def test_bad_params_raise_manifest_error(name, params, match):
    with pytest.raises(ManifestError, match=match):
        build_decoder(name, params)
