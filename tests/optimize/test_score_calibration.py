"""Score calibration of an int8 detector (optimize/score_calibration.py) on yolov8-layout
outputs made by hand: the fit must recover a known logit shift and refuse to guess from too few
detections. The real detector's case (YOLO11n to rpi5-int8) is in test_onnx_to_tflite.py."""

from __future__ import annotations

import numpy as np

from edge_sdk.manifest import TaskSpec
from optimize import score_calibration
from optimize.tasks import Scoring


def _outputs(logits: np.ndarray, boxes: np.ndarray) -> list[list[np.ndarray]]:
    """One image per row of `logits`: a (1, 5, N) yolov8 output, one class."""
    out = []
    for row in logits:
        scores = 1 / (1 + np.exp(-row))
        out.append([np.concatenate([boxes.T, scores[None]], 0)[None].astype(np.float32)])
    return out


def _scoring(n: int) -> Scoring:
    return Scoring(task=TaskSpec("detect", "yolov8", {"num_classes": 1}), labels=("person",),
                   image_names=tuple(f"{i}.jpg" for i in range(n)), output_names=("output0",))


def _case(images: int, boxes_per_image: int, shift: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = 40 + 80 * np.arange(boxes_per_image)  # apart: no NMS between them
    boxes = np.stack([centers, centers, np.full(boxes_per_image, 30.0),
                      np.full(boxes_per_image, 60.0)], 1)
    ref = rng.uniform(-3.0, 3.0, (images, boxes_per_image))
    noise = rng.normal(0.0, 0.2, ref.shape)
    return _outputs(ref, boxes), _outputs(ref - shift + noise, boxes)


def test_fit_recovers_the_shift_int8_put_on_the_scores():
    ref, got = _case(images=10, boxes_per_image=6, shift=0.45)
    fitted = score_calibration.fit(ref, got, _scoring(10))
    assert fitted.pairs >= 50 and fitted.images == 10
    assert abs(fitted.value - 0.45) < 0.1, fitted


def test_an_unbiased_model_gets_next_to_no_shift():
    ref, got = _case(images=10, boxes_per_image=6, shift=0.0, seed=1)
    assert abs(score_calibration.fit(ref, got, _scoring(10)).value) < 0.1


def test_too_few_detections_fit_nothing():
    ref, got = _case(images=3, boxes_per_image=3, shift=1.0)
    fitted = score_calibration.fit(ref, got, _scoring(3))
    assert fitted.value == 0.0 and fitted.pairs < score_calibration.MIN_PAIRS
