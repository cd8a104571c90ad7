"""Any tensors: what a model whose outputs the toolchain cannot interpret gets.

The bundle still exports and runs (`Model.infer` and `predict` return named tensors); its
quantized copies are judged per output by SQNR (signal-to-quantization-noise ratio, dB) and
cosine similarity against FP32 on the held-out images. The guard's budget is a floor on the
worst output's SQNR: 20 dB by default, i.e. the error's power at most 1 % of the signal's
(RMS error 10 % of the signal's RMS). FP16 reaches 60 dB and more; a sound int8 model lands
between 20 and 40 dB; an int8 model that lost an output (scores squashed to one value, a map
clipped) falls well under 20 (see tests/optimize/test_tasks.py).
"""

from __future__ import annotations

import numpy as np

from optimize.tasks.base import (
    Fidelity,
    Outputs,
    Scoring,
    Task,
    independent_images,
    register_task,
)

DEFAULT_SQNR_FLOOR_DB = 20.0
EXACT_DB = 120.0  # SQNR reported when an output matches FP32 exactly


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    noise = float(np.sum(np.square(ref.astype(np.float64) - got)))
    if noise == 0.0:
        return EXACT_DB
    if signal == 0.0:
        return -EXACT_DB
    return min(EXACT_DB, 10.0 * np.log10(signal / noise))


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def per_output(ref: Outputs, got: Outputs, names: list[str]) -> dict[str, dict[str, float]]:
    """SQNR over all images and the mean per-image cosine, for each output."""
    out = {}
    for k, name in enumerate(names):
        a = np.stack([o[k] for o in ref])
        b = np.stack([o[k] for o in got])
        out[name] = {"sqnr_db": sqnr_db(a, b),
                     "cosine": float(np.mean([cosine(x, y) for x, y in zip(a, b)]))}
    return out


def fidelity(ref: Outputs, got: Outputs, scoring: Scoring) -> Fidelity:
    stats = per_output(ref, got, list(scoring.output_names))
    worst = min(s["sqnr_db"] for s in stats.values())
    worst_cos = min(s["cosine"] for s in stats.values())
    return Fidelity(
        metric="SQNR (worst output)", value=worst, loss=-worst, unit="dB", images=len(ref),
        independent=independent_images(scoring.image_names),
        columns={"SQNR dB": f"{worst:.1f}", "cosine": f"{worst_cos:.4f}"},
        details={"per_output": stats}, floor=True, tiebreak=worst_cos)


TASK = register_task(Task(
    name="raw", decoders=("raw",), default_decoder="raw",
    fidelity_metric="per-output SQNR and cosine similarity with FP32",
    labelled_metric="none (raw tensors have no labels)", columns=("SQNR dB", "cosine"),
    budget_unit="dB (a floor on the worst output's SQNR)",
    default_budget=DEFAULT_SQNR_FLOOR_DB, fidelity=fidelity, float_tail=True,
    floor_budget=True))
