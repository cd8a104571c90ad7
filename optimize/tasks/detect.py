"""Detectors: judged by the detections a camera reports, decoded by the bundle's own decoder.

Against FP32 (no labels needed): the FP32 model's detections at the deployed confidence
threshold are the ground truth; the quantized model's detections scored down to 0.01 give
mAP@0.5 and mAP@0.5:0.95 (pycocotools, as COCO evaluation does), and its detections at the
deployed threshold give F1 (same class, IoU >= 0.5): what the camera actually reports.
The guard's loss in points is max(100 x (1 - mAP@0.5:0.95), 200 x (1 - F1)), so the default
10-point budget asks for mAP@0.5:0.95 >= 0.90 and F1 >= 0.95 against FP32 at once.

Text lines (`db-text`) are judged at IoU 0.5 alone, as ICDAR judges text detection: a line 30
pixels high loses 0.07 of IoU per pixel of height, which mAP@0.5:0.95 punishes and a text
recogniser reading the crop does not notice; their loss is max(100 x (1 - mAP@0.5), 200 x
(1 - F1)).
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import build_decoder
from edge_sdk.errors import EdgeError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections
from optimize.bench.accuracy import Boxes, detection_ap
from optimize.tasks.base import (
    Fidelity,
    Outputs,
    Scoring,
    Task,
    independent_images,
    register_task,
)

SCORE_FLOOR = 0.01  # predictions enter mAP down to this score, as COCO evaluation does
MATCH_IOU = 0.5
DEFAULT_BUDGET = 10.0
AT_IOU_05 = frozenset({"db-text"})  # decoders whose boxes are judged at IoU 0.5 alone
IDENTITY = FrameTransform(1.0, 1.0)  # compare in model-input pixels


def decode_all(outputs: Outputs, scoring: Scoring, conf: float | None = None,
               reference: bool = False) -> list[Detections]:
    """Every image's detections; `reference`: FP32's outputs, whose scores need no
    calibration (the bundle's score_shift is for the quantized model's)."""
    params = dict(scoring.task.params)
    if reference:
        params.pop("score_shift", None)
    if conf is not None:
        params["conf_threshold"] = conf
        params["max_detections"] = max(100, int(params.get("max_detections", 100)))
    try:
        decoder = build_decoder(scoring.task.decoder, params, scoring.labels)
    except EdgeError:  # a decoder without these parameters: score at its own threshold
        decoder = build_decoder(scoring.task.decoder, scoring.task.params, scoring.labels)
    return [decoder(list(o), IDENTITY) for o in outputs]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matches(truth: Detections, pred: Detections, iou: float = MATCH_IOU) -> int:
    """How many greedy one-to-one matches (matched_pairs) the two sets have."""
    return len(matched_pairs(truth, pred, iou))


def matched_pairs(truth: Detections, pred: Detections, iou: float = MATCH_IOU
                  ) -> list[tuple[int, int]]:
    """(truth index, prediction index) of greedy one-to-one matches of same-class boxes,
    best-scoring prediction first."""
    if not len(truth) or not len(pred):
        return []
    overlap = iou_matrix(pred.xyxy, truth.xyxy)
    overlap[pred.class_ids[:, None] != truth.class_ids[None, :]] = 0.0
    taken = np.zeros(len(truth), bool)
    found = []
    for i in np.argsort(-pred.scores, kind="stable"):
        row = np.where(taken, 0.0, overlap[i])
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            found.append((j, int(i)))
    return found


def f1_score(truths: list[Detections], preds: list[Detections]) -> float:
    tp = sum(matches(t, p) for t, p in zip(truths, preds))
    n_truth, n_pred = sum(map(len, truths)), sum(map(len, preds))
    return 1.0 if n_truth + n_pred == 0 else 2.0 * tp / (n_truth + n_pred)


def _boxes(d: Detections, truth: bool = False) -> Boxes:
    return Boxes(d.xyxy, d.class_ids, None if truth else d.scores)


def fidelity(ref: Outputs, got: Outputs, scoring: Scoring) -> Fidelity:
    truths = decode_all(ref, scoring, reference=True)  # FP32 at the deployed threshold
    deployed = decode_all(got, scoring)
    scored = decode_all(got, scoring, conf=SCORE_FLOOR)
    f1 = f1_score(truths, deployed)
    map50, map5095, per_class = detection_ap([_boxes(d) for d in scored],
                                             [_boxes(t, truth=True) for t in truths])
    boxes = sum(map(len, truths))
    if map5095 is None:  # FP32 found nothing at the deployed threshold: only F1 can judge
        loss = 200.0 * (1.0 - f1)
        value = f1
        metric = "F1 vs FP32 (FP32 found no boxes)"
    elif scoring.task.decoder in AT_IOU_05:
        loss = max(100.0 * (1.0 - map50), 200.0 * (1.0 - f1))
        value = map50
        metric = "mAP@0.5 vs FP32"
    else:
        loss = max(100.0 * (1.0 - map5095), 200.0 * (1.0 - f1))
        value = map5095
        metric = "mAP@0.5:0.95 vs FP32"
    names = {i: (scoring.labels[i] if i < len(scoring.labels) else str(i)) for i in per_class}
    return Fidelity(
        metric=metric, value=value, loss=loss, unit="points", images=len(ref),
        independent=independent_images(list(scoring.image_names)),
        columns={"mAP50-95 vs fp32": _fmt(map5095), "mAP50 vs fp32": _fmt(map50),
                 "F1 vs fp32": f"{f1:.3f}"},
        details={"map50": map50, "map50_95": map5095, "f1": f1, "fp32_boxes": boxes,
                 "quantized_boxes": sum(map(len, deployed)),
                 "per_class_ap_drop": {names[c]: 1.0 - ap for c, ap in per_class.items()}},
        tiebreak=value)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


TASK = register_task(Task(
    name="detect", decoders=("yolov5", "yolov8", "yolo-nms", "ssd", "db-text"),
    default_decoder=None,
    fidelity_metric="mAP@0.5:0.95 and F1 of decoded detections vs FP32",
    labelled_metric="mAP@0.5 and mAP@0.5:0.95 (pycocotools)",
    columns=("mAP50-95 vs fp32", "mAP50 vs fp32", "F1 vs fp32"),
    budget_unit="points: max(100 x (1 - mAP@0.5:0.95), 200 x (1 - F1)) vs FP32 (text lines, "
                "db-text: mAP@0.5 in place of mAP@0.5:0.95)",
    default_budget=DEFAULT_BUDGET, fidelity=fidelity, float_tail=True, bias_correction=False,
    score_calibration=True))
