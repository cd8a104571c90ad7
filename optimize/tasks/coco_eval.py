"""COCO keypoint (OKS) and mask mAP with pycocotools, for judging pose and instance masks.

The reference implementation of the figures papers publish: 101-point interpolated precision
over IoU (or OKS) thresholds 0.50:0.05:0.95; keypoints keep COCO's 20 detections an image and
its per-keypoint sigmas (for 17 keypoints; other skeletons get Ultralytics' uniform 1/K).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

# Ultralytics scores OKS with a person's area taken as 0.53 x its box (COCO uses the
# segmentation's area, which a pose model does not give).
BOX_TO_AREA = 0.53


@dataclass(frozen=True)
class Instances:
    """One image's instances: FP32's as ground truth (scores None) or a model's predictions."""

    xyxy: np.ndarray  # (N, 4)
    class_ids: np.ndarray  # (N,)
    scores: np.ndarray | None = None
    keypoints: np.ndarray | None = None  # (N, K, 3) x, y, visibility (0..1)
    masks: np.ndarray | None = None  # (N, H, W) bool


def keypoint_map(preds: list[Instances], truths: list[Instances], visible: float = 0.5
                 ) -> tuple[float | None, float | None]:
    """(mAP@0.5, mAP@0.5:0.95) by OKS; a truth keypoint counts where visibility > `visible`."""
    def annotation(inst: Instances, i: int, truth: bool) -> dict:
        box = _xywh(inst.xyxy[i])
        kpts = np.array(inst.keypoints[i], np.float64)
        if truth:
            kpts[:, 2] = np.where(kpts[:, 2] > visible, 2, 0)
        return {"bbox": box, "area": BOX_TO_AREA * box[2] * box[3],
                "keypoints": kpts.reshape(-1).tolist(), "num_keypoints": int((kpts[:, 2] > 0)
                                                                              .sum())}

    k = next((len(t.keypoints[0]) for t in truths + preds if t.keypoints is not None
              and len(t.keypoints)), 17)
    sigmas = None if k == 17 else np.full(k, 1.0 / k)
    return _evaluate("keypoints", preds, truths, annotation, sigmas)


def mask_map(preds: list[Instances], truths: list[Instances]
             ) -> tuple[float | None, float | None]:
    """(mAP@0.5, mAP@0.5:0.95) of the masks (COCO run-length encoding)."""
    from pycocotools import mask as rle

    def annotation(inst: Instances, i: int, truth: bool) -> dict:
        code = rle.encode(np.asfortranarray(inst.masks[i].astype(np.uint8)))
        return {"bbox": _xywh(inst.xyxy[i]), "segmentation": code,
                "area": float(rle.area(code))}

    return _evaluate("segm", preds, truths, annotation, None)


def _evaluate(kind: str, preds: list[Instances], truths: list[Instances], annotation,
              sigmas: np.ndarray | None) -> tuple[float | None, float | None]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted images vs {len(truths)} ground truths")
    images, gts, results, classes = [], [], [], set()
    for image_id, (pred, truth) in enumerate(zip(preds, truths), start=1):
        images.append({"id": image_id, **_size(pred, truth)})
        for i in range(len(truth.xyxy)):
            gts.append({**annotation(truth, i, True), "id": len(gts) + 1, "image_id": image_id,
                        "category_id": int(truth.class_ids[i]) + 1, "iscrowd": 0})
            classes.add(int(truth.class_ids[i]))
        for i in range(len(pred.xyxy)):
            results.append({**annotation(pred, i, False), "image_id": image_id,
                            "category_id": int(pred.class_ids[i]) + 1,
                            "score": float(pred.scores[i])})
            classes.add(int(pred.class_ids[i]))
    if kind == "keypoints":
        gts = [g for g in gts if g["num_keypoints"]]  # COCOeval ignores those anyway
    if not gts:
        return None, None
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts,
                      "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), kind)
        if sigmas is not None:
            evaluation.params.kpt_oks_sigmas = sigmas
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # area "all", most detections
    at50 = precision[int(np.argmin(np.abs(evaluation.params.iouThrs - 0.5)))]
    return _mean_valid(at50), _mean_valid(precision)


def _size(*instances: Instances) -> dict:
    """height and width of an image's masks (pycocotools wants them for mask evaluation)."""
    for inst in instances:
        if inst.masks is not None and inst.masks.ndim == 3:
            return {"height": int(inst.masks.shape[1]), "width": int(inst.masks.shape[2])}
    return {}


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]
