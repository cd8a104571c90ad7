"""The task interface: a registry entry per task, and the fidelity figure each one computes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_sdk.manifest import TaskSpec
from optimize.errors import ToolchainError

# Per held-out image, the model's outputs in manifest order (float32).
Outputs = list[list[np.ndarray]]


@dataclass(frozen=True)
class Fidelity:
    """How close a quantized model stays to FP32 on held-out images, in the task's terms.

    `loss` is in the budget's unit (points for classify/detect); the guard compares candidates
    by `key()` and passes one `within(budget)`. For a floor budget (raw: an SQNR floor in dB)
    the budget bounds `value` from below instead.
    """

    metric: str  # the headline figure's name, e.g. "top-1 agreement with FP32"
    value: float
    loss: float
    unit: str  # of `loss` and of the budget
    images: int  # images scored (views of one photo count separately)
    independent: int  # distinct photos behind them (a photo's crops and mirror count once)
    columns: dict[str, str]  # the report's cells for this task
    details: dict = field(default_factory=dict)
    floor: bool = False
    tiebreak: float = 0.0  # higher is better, when two candidates lose the same

    def within(self, budget: float) -> bool:
        return bool(self.value >= budget if self.floor else self.loss <= budget)

    def key(self) -> tuple[float, float]:
        return (-self.loss, self.tiebreak)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": _round(self.value), "loss": _round(self.loss),
                "unit": self.unit, "images": self.images, "independent_images": self.independent,
                "columns": self.columns, "details": _jsonable(self.details)}


@dataclass(frozen=True)
class Scoring:
    """What a fidelity function may know besides the outputs: the bundle's task (decoder and
    its parameters), labels, the held-out images' names and the outputs' names."""

    task: TaskSpec
    labels: tuple[str, ...]
    image_names: tuple[str, ...]
    output_names: tuple[str, ...]


FidelityFn = Callable[[Outputs, Outputs, Scoring], Fidelity]


@dataclass(frozen=True)
class Task:
    name: str
    decoders: tuple[str, ...]  # edge_sdk decoders that produce this task's results
    default_decoder: str | None
    fidelity_metric: str  # what the report's accuracy columns mean
    labelled_metric: str  # what `edge-opt bench` reports against labels
    columns: tuple[str, ...]  # report columns, filled from Fidelity.columns
    budget_unit: str  # what --max-drop (or the floor) counts
    default_budget: float | None  # None: the device profile's max_drop (points)
    fidelity: FidelityFn
    float_tail: bool = False  # int8 keeps the ops after the head's last weighted layers float
    # int8 bias correction (optimize/bias_correction.py) by default; measured per task. Off for
    # detectors: on YOLO11n it moved every person logit by -0.2 to -0.3 (-0.05 to -0.11
    # without) and cost F1 against FP32 on every int8 route (x86 OpenVINO 0.937 vs 0.962,
    # jetson 0.967 vs 0.973 on 61 held-out frames); on YOLO11n-pose it helped (F1 0.946 vs
    # 0.833). The guard tries the other setting when the budget is missed.
    bias_correction: bool = True
    floor_budget: bool = False  # the budget is a floor on the figure (raw SQNR)
    # int8 fits the decoder's score_shift on the calibration images (score_calibration.py)
    score_calibration: bool = False

    def budget(self, flag: float | None, profile_max_drop: float) -> float:
        if flag is not None:
            self.check_budget(flag)
            return flag
        return profile_max_drop if self.default_budget is None else self.default_budget

    def check_budget(self, flag: float | None) -> None:
        """A drop budget below 0 could never be met (a floor, as raw's SQNR, may be)."""
        if flag is not None and not self.floor_budget and flag < 0:
            raise ToolchainError(f"--max-drop {flag:g}: a {self.name} budget counts "
                                 f"{self.budget_unit} lost and cannot be negative; 0 allows "
                                 "no loss, e.g. --max-drop 2")

    def shortfall_text(self, fid: Fidelity, budget: float) -> str:
        """'loses 12.3 points of ..., over its 10-point budget' for the guard's message."""
        if self.floor_budget:
            return (f"reaches {fid.value:.1f} dB {fid.metric}, under its {budget:g} dB floor")
        figures = ", ".join(f"{k} {v}" for k, v in fid.columns.items())
        return (f"loses {fid.loss:.1f} {fid.unit} ({figures}), over its {budget:g}-point "
                "budget")


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise ToolchainError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
    return _REGISTRY[name]


def independent_images(names: list[str]) -> int:
    """Distinct photos among `names`: `x_tl.jpg`, `x_flip.jpg` ... are views of `x.jpg`."""
    return len({view_group(n) for n in names})


VIEW_SUFFIXES = ("_tl", "_tr", "_bl", "_br", "_flip")


def view_group(name: str) -> str:
    """The photo an image was made from (examples/data/make_eval_views.py names its views
    `<photo>_<view>.jpg`); any other image is its own group."""
    stem = name.rsplit(".", 1)[0]
    for suffix in VIEW_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _round(x: float) -> float:
    return round(float(x), 4)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        return _round(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
