"""A warning when the FP32 model answers (almost) the same whatever the image.

A model fed the wrong input range sees near-uniform frames: SSDLite, which expects pixels
0..255, given the default pixels / 255 gets a near-black frame and the same boxes and scores
for every image. Quantization copies that faithfully, so the accuracy guard passes and the
bundle is written with good fidelity: nothing else would tell the user. Only a warning, not a
refusal: some models legitimately answer alike on some data (a static scene, a detector that
finds nothing), and the user knows their data.

The measure is scale-free (outputs and inputs alike): the RMS over elements of each element's
spread across images, over the RMS of the values. Measured on the held-out images (2026-12-05):
correct exports 0.027 (YOLO11n-pose, street-clip frames of one fixed camera) to 0.97
(PP-OCRv4's map), with every output of a model counted and the largest kept; wrong input range
0.0003-0.0009 (SSDLite at pixels / 255) and 0.0018 (YOLO11n at pixels / 65025).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_sdk.manifest import InputSpec
from optimize.tasks.base import Outputs

FLAT = 0.005  # outputs varying less than this share of their size count as flat
INPUT_SHARE = 0.05  # ... and less than this share of the inputs' own variation
MIN_IMAGES = 3  # fewer cannot tell a flat model from two alike images


def variation(tensors: Sequence[np.ndarray]) -> float:
    """How much same-shaped tensors differ from one another, relative to their size: 0 when
    they are equal, unchanged when all are scaled alike."""
    flat = [np.asarray(t).reshape(-1) for t in tensors]  # two passes, one image in float64
    count = len(flat) * flat[0].size  # at a time: 122 inputs of 640x640 stacked took 1.2 GB
    mean = np.zeros(flat[0].size, np.float64)
    squares = 0.0
    for t in flat:
        v = t.astype(np.float64)
        mean += v
        squares += float(v @ v)
    size = float(np.sqrt(squares / count))
    if not np.isfinite(size):
        return float("nan")
    mean /= len(flat)
    spread = sum(float(np.square(t.astype(np.float64) - mean).sum()) for t in flat) / count
    return float(np.sqrt(spread)) / size if size > 0 else 0.0


def flat_outputs_warning(inputs: Sequence[np.ndarray], outputs: Outputs, spec: InputSpec
                         ) -> str | None:
    """One line when every FP32 output barely varies across images whose inputs do vary,
    naming the preprocessing flags to check; None otherwise (or with too few images)."""
    if len(inputs) < MIN_IMAGES or len(outputs) != len(inputs):
        return None
    spread_in = variation(inputs)
    if not spread_in > 0:
        return None
    spreads = []
    for k in range(len(outputs[0])):
        values = [np.asarray(per_image[k]) for per_image in outputs]
        if len({v.shape for v in values}) > 1:  # a count of detections that changes: it varies
            return None
        spreads.append(variation(values))
    spread_out = max(spreads)
    if not (np.isfinite(spreads).all() and spread_out < min(FLAT, INPUT_SHARE * spread_in)):
        return None  # NaN or inf outputs are for other checks
    lo = min((0 - m) / s for m, s in zip(spec.mean, spec.std))
    hi = max((255 - m) / s for m, s in zip(spec.mean, spec.std))
    given = f"--mean {_values(spec.mean)} --std {_values(spec.std)}"
    colour = "" if spec.color == "GRAY" else f", {spec.color}"
    return (f"the FP32 model's outputs hardly change across the {len(inputs)} held-out images "
            f"(by {spread_out:.2%} of their size): it may expect another input range or colour "
            f"order. It is given {lo:.3g}..{hi:.3g}{colour} ({given}); check --mean/--std "
            "against the range it was trained on (0..255: --mean 0 --std 1) and --color")


def _values(values: Sequence[float]) -> str:
    """A flag's value as the user types it: one number when the channels agree."""
    return f"{values[0]:g}" if len(set(values)) == 1 else ",".join(f"{v:g}" for v in values)
