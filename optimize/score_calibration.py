"""Score calibration: give back the shift int8 puts on a detector's confidence scores.

Int8 can move a detector's scores down as a whole: on YOLO11n (street frames, rpi5-int8 via
LiteRT) the person logits of anchors FP32 scores above 0.05 sat 0.46-0.50 below FP32's, with
a 0.3 scatter, so the deployed threshold dropped pedestrians FP32 reports (F1 against FP32
0.941 on 122 held-out frames; 0.971 with the shift below, fitted on the 31 calibration
frames). Layer-wise bias correction does not see it: it is the sum of many small errors.

The fit is end to end and knows nothing of the head's layout: the quantized and the FP32
model's detections on the calibration images are decoded down to a score of 0.01 and matched
(same class, IoU >= 0.5), and the median gap of the matched scores on the logit scale becomes
the decoder's `score_shift` (edge_sdk/decoders/nms.py), which the device applies to every
score. Only calibration images are used, so the guard's held-out figures judge it like any
other quantization setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_sdk.decoders.nms import MAX_SCORE_SHIFT
from edge_sdk.results import Detections
from optimize.tasks import Outputs, Scoring
from optimize.tasks.detect import SCORE_FLOOR, decode_all, matched_pairs

MIN_PAIRS = 20  # fewer matched detections than this: too few to tell a shift from noise


@dataclass(frozen=True)
class ScoreShift:
    value: float  # logits added to the quantized model's scores; 0 when not fitted
    pairs: int  # matched detections it was measured on
    images: int

    def to_dict(self) -> dict:
        return {"score_shift": self.value, "matched_detections": self.pairs,
                "calibration_images": self.images, "method": "median logit gap of matched "
                "detections vs FP32 (IoU >= 0.5, scores >= 0.01)"}


def fit(reference: Outputs, quantized: Outputs, scoring: Scoring) -> ScoreShift:
    """The shift that brings the quantized model's matched scores to FP32's, in the median."""
    truths = decode_all(reference, scoring, conf=SCORE_FLOOR, reference=True)
    preds = decode_all(quantized, scoring, conf=SCORE_FLOOR, reference=True)
    gaps = np.concatenate([_gaps(t, p) for t, p in zip(truths, preds)] or [np.zeros(0)])
    if len(gaps) < MIN_PAIRS:
        return ScoreShift(0.0, len(gaps), len(reference))
    shift = float(np.clip(np.median(gaps), -MAX_SCORE_SHIFT, MAX_SCORE_SHIFT))
    return ScoreShift(round(shift, 4), len(gaps), len(reference))


def _gaps(truth: Detections, pred: Detections) -> np.ndarray:
    pairs = matched_pairs(truth, pred)
    if not pairs:
        return np.zeros(0)
    t, p = (np.array(x) for x in zip(*pairs))
    return _logit(truth.scores[t]) - _logit(pred.scores[p])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
