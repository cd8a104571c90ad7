"""Pose models: judged by the keypoints a camera reports, decoded by the bundle's decoder.

Against FP32 (no labels needed), as detectors are: FP32's people (boxes and keypoints) at
the deployed threshold are the ground truth, the quantized model's, scored down to 0.01, give
the keypoint mAP@0.5 and mAP@0.5:0.95 by OKS (pycocotools, COCO's sigmas; a FP32 keypoint
counts where its visibility passes 0.5) and the box mAP; its people at the deployed threshold
give F1 (box IoU >= 0.5). The guard's loss in points is max(100 x (1 - keypoint
mAP@0.5:0.95), 200 x (1 - F1)): the default 10 points asks for OKS mAP >= 0.90 and F1 >= 0.95.
"""

from __future__ import annotations

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
from optimize.tasks.coco_eval import Instances, keypoint_map
from optimize.tasks.detect import DEFAULT_BUDGET, SCORE_FLOOR, decode_all, f1_score


def _instances(d: Detections, truth: bool = False) -> Instances:
    return Instances(d.xyxy, d.class_ids, None if truth else d.scores, keypoints=d.keypoints)


def fidelity(ref: Outputs, got: Outputs, scoring: Scoring) -> Fidelity:
    truths = decode_all(ref, scoring, reference=True)
    deployed = decode_all(got, scoring)
    scored = decode_all(got, scoring, conf=SCORE_FLOOR)
    f1 = f1_score(truths, deployed)
    kpt50, kpt5095 = keypoint_map([_instances(d) for d in scored],
                                  [_instances(t, truth=True) for t in truths])
    box50, box5095, _ = detection_ap([Boxes(d.xyxy, d.class_ids, d.scores) for d in scored],
                                     [Boxes(t.xyxy, t.class_ids) for t in truths])
    if kpt5095 is None:  # FP32 saw no keypoint at the deployed threshold: only F1 can judge
        value, loss, metric = f1, 200.0 * (1.0 - f1), "F1 vs FP32 (FP32 found no keypoints)"
    else:
        value, loss = kpt5095, max(100.0 * (1.0 - kpt5095), 200.0 * (1.0 - f1))
        metric = "keypoint mAP@0.5:0.95 (OKS) vs FP32"
    return Fidelity(
        metric=metric, value=value, loss=loss, unit="points", images=len(ref),
        independent=independent_images(list(scoring.image_names)),
        columns={"OKS mAP50-95 vs fp32": _fmt(kpt5095), "OKS mAP50 vs fp32": _fmt(kpt50),
                 "box mAP50-95 vs fp32": _fmt(box5095), "F1 vs fp32": f"{f1:.3f}"},
        details={"keypoint_map50": kpt50, "keypoint_map50_95": kpt5095, "box_map50": box50,
                 "box_map50_95": box5095, "f1": f1, "fp32_people": sum(map(len, truths)),
                 "quantized_people": sum(map(len, deployed))},
        tiebreak=value)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


TASK = register_task(Task(
    name="pose", decoders=("yolov8-pose",), default_decoder="yolov8-pose",
    fidelity_metric="keypoint mAP (OKS) and F1 of decoded people vs FP32",
    labelled_metric="none yet (keypoint labels are not read; scored against FP32)",
    columns=("OKS mAP50-95 vs fp32", "OKS mAP50 vs fp32", "box mAP50-95 vs fp32",
             "F1 vs fp32"),
    budget_unit="points: max(100 x (1 - OKS mAP@0.5:0.95), 200 x (1 - F1)) vs FP32",
    default_budget=DEFAULT_BUDGET, fidelity=fidelity, float_tail=True, score_calibration=True))
