"""NMS wrapper: hand-computed keep lists (IoUs worked out in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.decoders.nms import nms

# A and B overlap: inter 9*10 = 90, union 110 -> IoU 0.818.
# C has A's coordinates but another class. D is far away.
# E vs A: inter 5*10 = 50, union 150 -> 0.333; E vs B: inter 60, union 140 -> 0.429.
BOXES = np.array(
    [
        [0, 0, 10, 10],  # A
        [1, 0, 11, 10],  # B
        [0, 0, 10, 10],  # C
        [20, 20, 30, 30],  # D
        [5, 0, 15, 10],  # E
    ],
    np.float32,
)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
CLASSES = np.array([0, 0, 1, 0, 0])


@pytest.mark.parametrize(
    ("iou_threshold", "class_aware", "max_detections", "expected"),
    [
        (0.5, True, 0, [0, 2, 3, 4]),  # B suppressed by A; C is another class
        (0.3, True, 0, [0, 2, 3]),  # now E (0.333 with A) goes too
        (0.85, True, 0, [0, 1, 2, 3, 4]),  # nothing overlaps that much except A/C (classes differ)
        (0.5, False, 0, [0, 3, 4]),  # class-agnostic: C (IoU 1 with A) goes
        (0.5, True, 2, [0, 2]),  # truncated after NMS, best first
    ],
)
def test_keep_lists(iou_threshold, class_aware, max_detections, expected):
    keep = nms(BOXES, SCORES, iou_threshold, CLASSES if class_aware else None, max_detections)
    assert keep.dtype == np.int64
    assert keep.tolist() == expected


def test_order_is_by_score_not_input_order():
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]], np.float32)
    keep = nms(boxes, np.array([0.3, 0.9, 0.5], np.float32), 0.5, np.array([0, 1, 0]))
    assert keep.tolist() == [1, 2, 0]


def test_iou_equal_to_threshold_is_kept():
    # inter 100, union 200 -> IoU exactly 0.5: suppression needs IoU > threshold.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.49).tolist() == [0]


def test_classes_never_suppress_each_other_with_negative_coordinates():
    # OpenCV offsets classes by (largest coordinate + 1); with negative coordinates that alone
    # would let this class-1 box (inside the class-0 box) be suppressed.
    boxes = np.array([[-50, -50, 10, 10], [-39, -39, -29, -29]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8], np.float32), 0.01, np.array([0, 1]))
    assert keep.tolist() == [0, 1]


def test_fractional_coordinates_are_not_rounded():
    # (0,0,10,10) vs (0.9,0.9,10.9,10.9): inter 9.1^2 = 82.81, union 117.19 -> IoU 0.7066.
    boxes = np.array([[0, 0, 10, 10], [0.9, 0.9, 10.9, 10.9]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.70).tolist() == [0]
    assert nms(boxes, scores, 0.71).tolist() == [0, 1]


def test_empty():
    keep = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, np.zeros(0))
    assert keep.shape == (0,) and keep.dtype == np.int64
