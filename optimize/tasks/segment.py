"""Segmentation: semantic maps judged by mean IoU, instance masks by mask mAP, against FP32.

Semantic (`semantic-map`): each held-out image's class map from the quantized model against
FP32's, in the map's own pixels; per class IoU = TP / (TP + FP + FN) summed over the images.
A map of one class against the rest (a probability map such as PP-OCR's text or MediaPipe's
person, or two channels) is judged by that class's IoU: the background's IoU is near 1 whatever
the mask does (text covers a tenth of a page), so averaging it in would halve every loss.
More classes: mIoU, the mean over the classes either model painted (as VOC, Cityscapes and
ADE20K report it). Loss = 100 x (1 - IoU) points.

Instance (`yolov8-seg`): as detectors are judged (FP32's instances at the deployed threshold are
the truth, the quantized model's scored down to 0.01), with mask mAP@0.5:0.95 (pycocotools,
iouType 'segm') in place of box mAP, computed on the prototypes' grid. Loss = max(100 x
(1 - mask mAP@0.5:0.95), 200 x (1 - F1)).

Default budget: 10 points, as for detectors (mIoU >= 0.90: boundary pixels are where int8 and
FP32 disagree; a lost class or a blotched map costs tens of points).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_sdk.decoders import build_decoder
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections, Segmentation
from optimize.bench.accuracy import Boxes, detection_ap
from optimize.errors import ToolchainError
from optimize.tasks.base import (
    Fidelity,
    Outputs,
    Scoring,
    Task,
    independent_images,
    register_task,
)
from optimize.tasks.coco_eval import Instances, mask_map
from optimize.tasks.detect import DEFAULT_BUDGET, SCORE_FLOOR, f1_score
from optimize.tasks.raw import per_output

IDENTITY = FrameTransform(1.0, 1.0)  # maps stay in the model's own pixels


def class_ious(truths: list[np.ndarray], preds: list[np.ndarray]) -> dict[int, float]:
    """IoU of every class either side painted, over all images (one confusion count)."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for t, p in zip(truths, preds):
        if t.shape != p.shape:
            raise ToolchainError(f"class maps of different sizes: {t.shape} vs {p.shape}")
        for c in np.union1d(np.unique(t), np.unique(p)).tolist():
            a, b = t == c, p == c
            inter[c] = inter.get(c, 0) + int(np.count_nonzero(a & b))
            union[c] = union.get(c, 0) + int(np.count_nonzero(a | b))
    return {c: inter[c] / union[c] for c in sorted(union) if union[c]}


def semantic(ref: list[Segmentation], got: list[Segmentation], tensors: dict[str, dict],
             n_images: int, scoring: Scoring, binary: bool) -> Fidelity:
    """The foreground's IoU (`binary`: one class against the rest) or mIoU of the class maps;
    `tensors` (the map's SQNR and cosine, as raw tensors are judged) goes beside it, for
    comparison with tools that report only those."""
    truths, preds = [r.class_map for r in ref], [g.class_map for g in got]
    ious = class_ious(truths, preds)
    miou = float(np.mean(list(ious.values()))) if ious else 1.0
    agree = float(np.mean([np.mean(t == p) for t, p in zip(truths, preds)])) if truths else 1.0
    names = {c: (scoring.labels[c] if 0 <= c < len(scoring.labels) else str(c)) for c in ious}
    if binary:  # neither model painted the class anywhere: they agree
        value, metric = ious.get(1, 1.0), "foreground IoU vs FP32"
    else:
        value, metric = miou, "mIoU vs FP32"
    return Fidelity(
        metric=metric, value=value, loss=100.0 * (1.0 - value), unit="points",
        images=n_images, independent=independent_images(list(scoring.image_names)),
        columns={"fg IoU vs fp32": f"{value:.3f}" if binary else "-",
                 "mIoU vs fp32": f"{miou:.3f}", "pixel agree": f"{agree:.4f}",
                 "SQNR dB": f"{min(t['sqnr_db'] for t in tensors.values()):.1f}"},
        details={"miou": miou, "foreground_iou": value if binary else None,
                 "pixel_agreement": agree,
                 "per_class_iou": {names[c]: v for c, v in ious.items()},
                 "per_output": tensors},
        tiebreak=agree)


def one_class(decoder: object, outputs: list[np.ndarray]) -> bool:
    """Whether the map tells one class from the rest: a probability map, or two channels."""
    channels = getattr(decoder, "channels_first", None)
    if channels is None:
        return False
    return len(channels(np.asarray(outputs[getattr(decoder, "output", 0)]))) <= 2


def instance(ref: list[Detections], got: list[Detections], scored: list[Detections],
             n_images: int, scoring: Scoring) -> Fidelity:
    f1 = f1_score(ref, got)
    m50, m5095 = mask_map([Instances(d.xyxy, d.class_ids, d.scores, masks=d.masks)
                           for d in scored],
                          [Instances(t.xyxy, t.class_ids, masks=t.masks) for t in ref])
    box50, box5095, _ = detection_ap([Boxes(d.xyxy, d.class_ids, d.scores) for d in scored],
                                     [Boxes(t.xyxy, t.class_ids) for t in ref])
    if m5095 is None:
        value, loss, metric = f1, 200.0 * (1.0 - f1), "F1 vs FP32 (FP32 found no masks)"
    else:
        value, loss = m5095, max(100.0 * (1.0 - m5095), 200.0 * (1.0 - f1))
        metric = "mask mAP@0.5:0.95 vs FP32"
    return Fidelity(
        metric=metric, value=value, loss=loss, unit="points", images=n_images,
        independent=independent_images(list(scoring.image_names)),
        columns={"mask mAP50-95 vs fp32": _fmt(m5095), "mask mAP50 vs fp32": _fmt(m50),
                 "box mAP50-95 vs fp32": _fmt(box5095), "F1 vs fp32": f"{f1:.3f}"},
        details={"mask_map50": m50, "mask_map50_95": m5095, "box_map50": box50,
                 "box_map50_95": box5095, "f1": f1, "fp32_instances": sum(map(len, ref)),
                 "quantized_instances": sum(map(len, got))},
        tiebreak=value)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def proto_grid(outputs: list[np.ndarray]) -> FrameTransform:
    """Instance masks and boxes on the prototypes' grid (a quarter of the input): cheap, and
    the same grid for FP32 and the quantized model."""
    protos = [o for o in outputs if np.ndim(o) == 4]
    if len(protos) != 1 or not any(np.ndim(o) == 3 for o in outputs):  # a semantic map
        return IDENTITY
    mh, mw = np.shape(protos[0])[2:]
    return FrameTransform(4.0, 4.0, frame_w=mw, frame_h=mh, input_w=4 * mw, input_h=4 * mh)


def _decode(outputs: Outputs, scoring: Scoring, conf: float | None = None) -> list:
    params = dict(scoring.task.params)
    if conf is not None:
        params.update(conf_threshold=conf, max_detections=100)
    decoder = build_decoder(scoring.task.decoder, params, scoring.labels)
    return [decoder(list(o), proto_grid(o)) for o in outputs]


FidelityOf = Callable[[Outputs, Outputs, Scoring], Fidelity]
KINDS: dict[type, FidelityOf] = {
    Segmentation: lambda ref, got, s: semantic(
        _decode(ref, s), _decode(got, s), per_output(ref, got, list(s.output_names)),
        len(ref), s, binary=bool(ref) and one_class(_probe(s), list(ref[0]))),
    Detections: lambda ref, got, s: instance(_decode(ref, s), _decode(got, s),
                                             _decode(got, s, SCORE_FLOOR), len(ref), s),
}


def _probe(scoring: Scoring):
    return build_decoder(scoring.task.decoder, scoring.task.params, scoring.labels)


def fidelity(ref: Outputs, got: Outputs, scoring: Scoring) -> Fidelity:
    """Semantic or instance scoring, by what the bundle's decoder returns."""
    probe = _probe(scoring)
    kind = type(probe(list(ref[0]), proto_grid(ref[0]))) if ref else Segmentation
    if kind not in KINDS:
        raise ToolchainError(f"segment: decoder {scoring.task.decoder!r} returns {kind.__name__}"
                             "; a segmentation decoder returns Segmentation or Detections")
    return KINDS[kind](ref, got, scoring)


TASK = register_task(Task(
    name="segment", decoders=("semantic-map", "yolov8-seg"), default_decoder="semantic-map",
    fidelity_metric="IoU of the foreground (one-class maps) or mIoU of class maps (semantic), "
                    "mask mAP and F1 (instances) vs FP32",
    labelled_metric="none yet (mask labels are not read; scored against FP32)",
    columns=("fg IoU vs fp32", "mIoU vs fp32", "pixel agree", "SQNR dB"),
    budget_unit="points: 100 x (1 - IoU of the foreground, or mIoU of more classes), or "
                "max(100 x (1 - mask mAP@0.5:0.95), 200 x (1 - F1)) for instances, vs FP32",
    default_budget=DEFAULT_BUDGET, fidelity=fidelity, float_tail=True))
