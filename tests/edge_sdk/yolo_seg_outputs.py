"""Hand-made outputs in Ultralytics' YOLOv8-seg layout (no trained -seg checkpoint could be
obtained offline): what the instance-mask decoder and its fidelity are checked on."""

from __future__ import annotations

import numpy as np


def seg_outputs() -> list[np.ndarray]:
    """A 64x64 input, 16x16 prototypes (M = 2), 3 classes, 8 anchors; two confident boxes.

    Prototype 0 is +8 on the left half, prototype 1 on the top half (else -8). Box A (class 2)
    uses prototype 0, box B (class 0) prototype 1; the rest score 0.01.
    """
    m, classes, anchors = 2, 3, 8
    proto = np.full((1, m, 16, 16), -8.0, np.float32)
    proto[0, 0, :, :8] = 8.0
    proto[0, 1, :8, :] = 8.0
    det = np.zeros((1, 4 + classes + m, anchors), np.float32)
    det[0, 4:4 + classes] = 0.01
    det[0, :4, 0] = [16, 32, 32, 64]  # box A: x 0..32, y 0..64
    det[0, 4 + 2, 0] = 0.9
    det[0, 4 + classes:, 0] = [1.0, 0.0]
    det[0, :4, 1] = [32, 16, 64, 32]  # box B: x 0..64, y 0..32
    det[0, 4 + 0, 1] = 0.8
    det[0, 4 + classes:, 1] = [0.0, 1.0]
    return [det, proto]
