"""Classifiers: judged by top-1 agreement with the FP32 model (top-1/top-5 against labels).

Without labels the drop is 100 x (1 - agreement): an upper bound on the accuracy lost, since
a flip between two nearly tied classes counts in full.
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


def fidelity(ref: Outputs, got: Outputs, scoring: Scoring) -> Fidelity:
    a = np.stack([o[0].reshape(-1) for o in ref])
    b = np.stack([o[0].reshape(-1) for o in got])
    agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
    diff = np.abs(a - b)
    return Fidelity(
        metric="top-1 agreement with FP32", value=agreement, loss=100.0 * (1.0 - agreement),
        unit="points", images=len(ref), independent=independent_images(scoring.image_names),
        columns={"top-1 agree": f"{agreement:.3f}", "max |diff|": f"{diff.max():.4g}"},
        details={"top1_agreement": agreement, "max_abs_diff": float(diff.max()),
                 "mean_abs_diff": float(diff.mean())},
        tiebreak=-float(diff.mean()))


TASK = register_task(Task(
    name="classify", decoders=("topk",), default_decoder="topk",
    fidelity_metric="top-1 agreement with FP32", labelled_metric="top-1 / top-5 accuracy",
    columns=("top-1 agree", "max |diff|"), budget_unit="points of top-1 agreement",
    default_budget=None, fidelity=fidelity))
