"""PP-PicoDet's GFL head, decoded for edge_sdk: a user decoder carried inside the bundle.

    edge-opt export examples/models/picodet_layout_cdla.onnx \\
        --decoder examples/decoders/picodet.py:PicoDet ...

The model (examples/models/README.md) returns, per stride 8/16/32/64 (finest first), class
scores [1, N, C] with the sigmoid applied, then, after all the score outputs, the box
distributions [1, N, 4 x (reg_max + 1)]: for each side (left, top, right, bottom) a softmax over
reg_max + 1 bins whose expectation, times the stride, is the distance from the anchor cell's
centre to that side (Generalized Focal Loss / DFL). N = ceil(H / stride) x ceil(W / stride),
cells in row-major order. The graph does no NMS.

Post-processing follows PaddleDetection's PicoDet (as rapid-layout 1.2.1 ships it): per stride
the `pre_nms_top_k` cells with the highest score, every class above the threshold is a
candidate (a box may be "text" and "title" at once), class-aware NMS. Thresholds, NMS and the
mapping to frame pixels are edge_sdk's shared `DetectionDecoder._finish`, so the toolchain's
fidelity check can lower `conf_threshold` like for any built-in detector.

This file is copied into the bundle as decoder.py and imported on its own there: it may import
numpy, OpenCV and edge_sdk, but not files next to it.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders.nms import DetectionDecoder
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Detections


class PicoDet(DetectionDecoder):
    """Anchor-free PicoDet / GFL head: per-stride scores and box distributions, no NMS."""

    task = "detect"

    def __init__(
        self,
        labels: tuple[str, ...] = (),
        strides: tuple[int, ...] | list[int] = (8, 16, 32, 64),
        input_hw: tuple[int, int] | list[int] = (800, 608),
        pre_nms_top_k: int = 1000,
        multi_label: bool = True,
        conf_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        **params,
    ) -> None:
        # rapid-layout's defaults: confidence 0.5, IoU 0.5
        super().__init__(labels, conf_threshold=conf_threshold, iou_threshold=iou_threshold,
                         **params)
        if not strides or not all(isinstance(s, int) and s > 0 for s in strides):
            raise ManifestError(f"PicoDet: strides must be positive integers, got {strides!r}")
        if len(input_hw) != 2 or not all(isinstance(v, int) and v > 0 for v in input_hw):
            raise ManifestError(f"PicoDet: input_hw must be [height, width], got {input_hw!r}")
        self.strides = tuple(strides)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.multi_label = bool(multi_label)
        self._centres = [self._cell_centres(s) for s in self.strides]

    def _cell_centres(self, stride: int) -> np.ndarray:
        """(N, 2) x, y of each cell's centre in input pixels, row-major like the head."""
        h, w = (-(-side // stride) for side in self.input_hw)  # ceil
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return (np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) + 0.5) * stride

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Detections:
        levels = len(self.strides)
        if len(outputs) != 2 * levels:
            raise ManifestError(f"PicoDet: expected {2 * levels} outputs (scores then box "
                                f"distributions for strides {list(self.strides)}), got "
                                f"{len(outputs)}")
        boxes, scores = [], []
        for k, stride in enumerate(self.strides):
            score = np.asarray(outputs[k], np.float32).reshape(-1, np.shape(outputs[k])[-1])
            dist = np.asarray(outputs[k + levels], np.float32)
            centres = self._centres[k]
            if len(score) != len(centres) or dist.size != len(centres) * dist.shape[-1] or \
                    dist.shape[-1] % 4:
                raise ManifestError(
                    f"PicoDet: stride {stride} expects {len(centres)} cells for a "
                    f"{self.input_hw[0]}x{self.input_hw[1]} input, got scores "
                    f"{np.shape(outputs[k])} and distributions {dist.shape}")
            self._check_classes(score.shape[1], "[1, N, C] per stride")
            top = np.argsort(-score.max(axis=1), kind="stable")[: self.pre_nms_top_k]
            distances = _integral(dist.reshape(len(centres), 4, -1)[top]) * stride
            c = centres[top]
            boxes.append(np.concatenate([c - distances[:, :2], c + distances[:, 2:]], axis=1))
            scores.append(score[top])
        xyxy, score = np.concatenate(boxes), np.concatenate(scores)
        if self.multi_label:  # one candidate per (cell, class) over the threshold
            rows, class_ids = np.nonzero(score > self.conf_threshold)
            return self._finish(xyxy[rows], score[rows, class_ids], class_ids, transform)
        class_ids = score.argmax(axis=1)
        return self._finish(xyxy, score.max(axis=1), class_ids, transform)


def _integral(logits: np.ndarray) -> np.ndarray:
    """(N, 4, bins) logits -> (N, 4) expected bin index under their softmax (DFL)."""
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)) @ np.arange(logits.shape[2], dtype=np.float32)
