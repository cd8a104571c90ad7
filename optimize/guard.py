"""The accuracy guard: a quantized export must stay within the accuracy budget, or say so.

If a target drops more than `--max-drop` points, layers are ranked by sensitivity (SQNR each
node loses on calibration data, optimize/sensitivity.py) and tried in float one at a time,
most sensitive first; a layer stays in float only if it improves the held-out score (after
the other calibration methods, percentile and entropy, have been tried and the best kept). The
search stops inside the budget or after `tries` layers. Without labels the score is top-1
agreement with FP32, and the drop is 100 x (1 - agreement): an upper bound on the accuracy
lost, since a flip between two nearly tied classes counts in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from device_profiles import Target, load_schemes
from optimize import formats
from optimize.formats import Artifact, BuildContext
from optimize.sensitivity import rank_nodes
from optimize.steps import StepContext, run_step

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")

# Evaluate an artifact: (top-1 agreement with FP32, mean abs output difference).
Evaluate = Callable[[Target, Artifact], tuple[float, float]]


@dataclass
class GuardOutcome:
    artifact: Artifact
    budget: float
    drop_before: float
    drop: float
    kept_float: list[str] = field(default_factory=list)
    tried: int = 0
    searched: bool = False
    calibration_method: str | None = None

    @property
    def passed(self) -> bool:
        return self.drop <= self.budget

    def to_dict(self) -> dict:
        return {"metric": "top-1 agreement with FP32 on held-out images",
                "budget_points": self.budget, "drop_before_points": round(self.drop_before, 3),
                "drop_after_points": round(self.drop, 3), "passed": self.passed,
                "kept_float": self.kept_float, "layers_tried": self.tried,
                "searched": self.searched, "calibration_method": self.calibration_method}


def can_exclude(target: Target) -> bool:
    """Formats whose int8 path honours per-node exclusions (onnxruntime and OpenVINO)."""
    return target.precision == "int8" and target.format in ("onnx", "openvino")


def guarded_build(target: Target, ctx: BuildContext, evaluate: Evaluate, budget: float,
                  tries: int = 8) -> GuardOutcome:
    artifact = formats.build(target, ctx)
    agreement, error = evaluate(target, artifact)
    outcome = GuardOutcome(artifact, budget, _drop(agreement), _drop(agreement))
    if outcome.passed or not can_exclude(target) or ctx.calibration is None:
        return outcome
    outcome.searched = True
    outcome.calibration_method = ctx.calibration_method
    best = (agreement, -error)
    methods = CALIBRATION_METHODS if _uses_ort_calibration(target) else ()
    for method in methods:  # first the cheap knob: how activation ranges are chosen
        if method == ctx.calibration_method:
            continue
        trial = replace(ctx, calibration_method=method)
        candidate = formats.build(target, trial)
        agreement, error = evaluate(target, candidate)
        if (agreement, -error) > best:
            best, ctx = (agreement, -error), trial
            outcome.artifact, outcome.drop = candidate, _drop(agreement)
            outcome.calibration_method = method
            if outcome.passed:
                return outcome
    for name in _ranking(target, ctx)[:tries]:
        outcome.tried += 1
        trial = replace(ctx, exclude_nodes=(*outcome.kept_float, name))
        candidate = formats.build(target, trial)
        agreement, error = evaluate(target, candidate)
        if (agreement, -error) > best:
            best = (agreement, -error)
            outcome.kept_float.append(name)
            outcome.artifact, outcome.drop = candidate, _drop(agreement)
            if outcome.passed:
                break
    if outcome.artifact.record is not None:
        outcome.artifact.record = {**outcome.artifact.record,
                                   "excluded_nodes": list(outcome.kept_float)}
    return outcome


def _uses_ort_calibration(target: Target) -> bool:
    """onnxruntime's calibrator (and so --calib-method) makes this target's int8 ranges."""
    return target.format == "onnx" or "calibrate_with" in (target.scheme or {})


def _drop(agreement: float) -> float:
    return 100.0 * (1.0 - agreement)


def _ranking(target: Target, ctx: BuildContext) -> list[str]:
    """Nodes by sensitivity under the onnxruntime scheme that calibrates this target."""
    scheme = target.scheme
    if "calibrate_with" in scheme or target.format != "onnx":
        name = scheme.get("calibrate_with", "ort-u8s8")
        scheme = {"name": name, **load_schemes()[name]}
    key = ("ranking", scheme["name"])
    if key not in ctx.cache:
        qdq = ctx.unique_path("sensitivity", ".onnx")
        prepared = ctx.unique_path("prepared", ".onnx")
        step = StepContext(input_name=ctx.source.input_name, scheme=scheme,
                           calibration=ctx.calibration,
                           calibration_method=ctx.calibration_method, compact=False,
                           keep_prepared=prepared)
        run_step("int8", ctx.source.onnx_path, qdq, step)
        ranked = rank_nodes(prepared, qdq, ctx.calibration, ctx.source.input_name, ctx.workdir)
        ctx.cache[key] = [node for node, _ in ranked]
    return ctx.cache[key]
