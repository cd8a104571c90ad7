"""Accuracy of a bundle: against labels, or against the FP32 model when the data has none.

Classification uses the ranking of the model's first output (logits or probabilities).
Detection mAP is pycocotools' COCOeval, the reference implementation that published COCO
numbers come from, so `mAP@0.5:0.95` here means what it means in a paper: 101-point
interpolated precision, IoU thresholds 0.50:0.05:0.95, at most 100 detections per image.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

TOP_K = 5


@dataclass(frozen=True)
class Boxes:
    """Boxes of one image: model detections (with scores) or ground truth (without)."""

    xyxy: np.ndarray  # (N, 4) x1 y1 x2 y2, pixels
    class_ids: np.ndarray  # (N,) int
    scores: np.ndarray | None = None  # (N,), None for ground truth
    crowd: np.ndarray | None = None  # (N,) bool, COCO iscrowd (ground truth only)

    def as_truth(self) -> Boxes:
        """These detections as ground truth (FP32 boxes when the data has no labels)."""
        return Boxes(self.xyxy, self.class_ids)


def ranked(scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """The k best class ids of each row, best first (what the worker keeps instead of all the
    scores: 5 ints an image instead of 1000 floats, so a big data set does not weigh on the
    measured peak memory)."""
    scores = np.asarray(scores, np.float32).reshape(len(scores), -1)
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)


def topk_accuracy(ranked_ids: np.ndarray, targets: np.ndarray, k: int) -> float | None:
    """Share of images whose true class is among their k best (None if fewer than k classes)."""
    if k > ranked_ids.shape[1] or not len(ranked_ids):
        return None
    return float(np.mean(np.any(ranked_ids[:, :k] == np.asarray(targets)[:, None], axis=1)))


def top1_agreement(ranked_ids: np.ndarray, reference: np.ndarray) -> float:
    """Share of images whose top-1 class matches the reference model's."""
    return float(np.mean(ranked_ids[:, 0] == reference[:, 0]))


def detection_map(predictions: list[Boxes], truths: list[Boxes]
                  ) -> tuple[float | None, float | None]:
    """(mAP@0.5, mAP@0.5:0.95) of `predictions` against `truths`, image by image.

    None when there is no ground-truth box at all (nothing to measure against).
    """
    map50, map5095, _ = detection_ap(predictions, truths)
    return map50, map5095


def detection_ap(predictions: list[Boxes], truths: list[Boxes]
                 ) -> tuple[float | None, float | None, dict[int, float]]:
    """detection_map's two figures and the AP@0.5:0.95 of each class that has ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predicted images vs {len(truths)} ground truths")
    images, annotations, results, classes = [], [], [], set()
    for i, (pred, truth) in enumerate(zip(predictions, truths), start=1):
        images.append({"id": i})
        crowd = np.zeros(len(truth.xyxy), bool) if truth.crowd is None else truth.crowd
        for box, cls, is_crowd in zip(truth.xyxy, truth.class_ids, crowd):
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": xywh,
                                "category_id": int(cls) + 1, "area": xywh[2] * xywh[3],
                                "iscrowd": int(is_crowd)})
            classes.add(int(cls))
        scores = np.ones(len(pred.xyxy)) if pred.scores is None else pred.scores
        for box, cls, score in zip(pred.xyxy, pred.class_ids, scores):
            results.append({"image_id": i, "bbox": _xywh(box), "category_id": int(cls) + 1,
                            "score": float(score)})
            classes.add(int(cls))
    truth_classes = sorted({int(c) for t in truths for c in t.class_ids})
    if not annotations:
        return None, None, {}
    if not results:
        return 0.0, 0.0, {c: 0.0 for c in truth_classes}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: [IoU threshold, recall point, class, area range, max detections]; area "all"
    # and 100 detections are index 0 and -1, exactly what COCOeval.summarize() reports.
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    at50 = precision[int(np.argmin(np.abs(evaluation.params.iouThrs - 0.5)))]
    order = [c - 1 for c in evaluation.params.catIds]  # precision's class axis
    per_class = {c: _mean_valid(precision[:, :, order.index(c)]) for c in truth_classes}
    return _mean_valid(at50), _mean_valid(precision), {
        c: ap for c, ap in per_class.items() if ap is not None}


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _mean_valid(values: np.ndarray) -> float | None:
    """COCOeval marks classes without ground truth as -1; they are left out of the mean."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None
