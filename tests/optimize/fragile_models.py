"""A tiny classifier with exactly one layer that int8 breaks, and images it classifies.

    input -> Conv "conv" (3x3 channel means: R, G, B, plus one dead channel) -> Relu "relu"
          -> GlobalAveragePool "gap" -> Flatten "flatten" -> Gemm "fc" (4 classes) -> output
                                                      [-> Gemm "head" (identity, benign)]

The Gemm "fc" is the fragile layer. Each class row holds small nearest-colour-centroid weights
(|w| < 4) on R, G, B and a huge weight (1000) on the dead channel, which is 0 on every image, so
in float it contributes nothing. Per-channel symmetric int8 gives each row a scale of
1000 / 127 ~ 7.9: every small weight rounds to 0, all four logits collapse to their biases and
top-1 becomes one fixed class. The logits themselves are small, so the collapse costs "fc"
nearly all of its output SQNR and a sensitivity ranking should put it first.

Kept in float (onnxruntime's `nodes_to_exclude`), "fc" has float weights and bias, and its
output is a model output, which the int8 step keeps float anyway. Its input features went
through int8 upstream (the pool's output Q/DQ), which flips nothing: they are channel means of
well-separated colour clusters (top-1 margins >= 0.39, int8 moves the logits by < 0.02).
Every conv weight (1/9, 0, or -0.1 in the dead channel) is exact in int8.

With `benign_head=True` an identity Gemm "head" follows "fc", so the fragile layer sits inside
the graph: its output is then Q/DQ'd as the head's input, which costs nothing here (the logits'
range is small and their margins wide), and the head itself is exact in int8.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from onnx import helper, numpy_helper

from tests.optimize.tiny_models import save_model

FRAGILE_NODE = "fc"
HW = 16
HUGE = 1000.0
# Colour clusters in RGB (0-255): red, green, blue, grey. One class per cluster.
CENTRES = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]], np.float32)


def fragile_classifier(path: Path, benign_head: bool = False) -> Path:
    conv_w = np.zeros((4, 3, 3, 3), np.float32)
    for c in range(3):
        conv_w[c, c] = 1.0 / 9.0  # channel c: the 3x3 mean of input channel c
    conv_w[3] = -0.1  # dead: negative on [0, 1] pixels, so Relu makes it 0 everywhere
    conv_b = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
    mu = CENTRES / 255.0  # cluster centres in feature space (the channel means)
    fc_w = np.zeros((4, 4), np.float32)
    fc_w[:, :3] = 4.0 * mu  # nearest centroid: 4 * (mu_c . f - |mu_c|^2 / 2)
    fc_w[:, 3] = HUGE
    fc_b = (-2.0 * (mu**2).sum(1)).astype(np.float32)
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
             numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["h" if benign_head else "output"],
                              name=FRAGILE_NODE, transB=1)]
    if benign_head:
        inits += [numpy_helper.from_array(np.eye(4, dtype=np.float32), "head_w"),
                  numpy_helper.from_array(np.zeros(4, np.float32), "head_b")]
        nodes.append(helper.make_node("Gemm", ["h", "head_w", "head_b"], ["output"], name="head",
                                      transB=1))
    return save_model(path, "fragile", nodes, inits, HW, 4)


def cluster_images(folder: Path, n: int, seed: int) -> Path:
    """n PNGs cycling through the four colour clusters (jitter +-20 per channel, pixel noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = CENTRES[i % len(CENTRES)] + rng.uniform(-20, 20, 3)
        rgb = colour + rng.normal(0, 6, (HW, HW, 3))
        image = np.clip(rgb, 0, 255).round().astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), image[..., ::-1])  # cv2 writes BGR
    return folder
