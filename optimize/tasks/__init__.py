"""Tasks: what a model's outputs mean, and the yardstick its quantized copies are judged by.

One module per task, each registering a `Task`: its runtime decoders, its fidelity metric
against the FP32 model, its labelled metric, the unit and default of the accuracy guard's
budget, and whether int8 keeps the head's tail in float. Export, guard, report and bench ask
the task; none of them branches on its name. `raw` is what a model whose outputs the
toolchain cannot interpret gets: it still exports, runs and is judged (per-output SQNR).
"""

from __future__ import annotations

from optimize.tasks.base import (
    Fidelity,
    Outputs,
    Scoring,
    Task,
    get_task,
    register_task,
    task_names,
)

# Importing the task modules registers them.
from optimize.tasks import classify, detect, pose, raw, segment  # noqa: E402,F401  isort: skip

__all__ = ["Fidelity", "Outputs", "Scoring", "Task", "get_task", "register_task", "task_names"]
