"""Classification: top-k classes from a logits or probabilities vector."""

from __future__ import annotations

import numpy as np

from edge_sdk.decoders import register_decoder
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from edge_sdk.results import Classification

MAX_K = 1000


@register_decoder("topk")
class TopK:
    task = "classify"

    def __init__(self, labels: tuple[str, ...] = (), top_k: int = 5, softmax: bool = True):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_K:
            raise ManifestError(f"topk: top_k must be an integer from 1 to {MAX_K} (how many "
                                f"classes to report), got {top_k!r}")
        if not isinstance(softmax, bool):
            raise ManifestError(f"topk: softmax must be true or false, got {softmax!r}")
        self.labels = labels
        self.top_k = top_k
        self.softmax = softmax

    def __call__(self, outputs: list[np.ndarray], transform: FrameTransform) -> Classification:
        scores = np.asarray(outputs[0], np.float32).reshape(-1)
        if self.softmax:
            exp = np.exp(scores - scores.max())
            scores = exp / exp.sum()
        k = min(self.top_k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        labels = tuple(self.labels[i] if i < len(self.labels) else str(i) for i in top)
        return Classification(class_ids=top.astype(np.int64), scores=scores[top], labels=labels)
