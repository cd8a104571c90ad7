"""The accuracy guard: a quantized export must stay within the accuracy budget, or say so.

The yardstick is the task's (optimize/tasks/): top-1 agreement for a classifier, mAP and F1
of decoded detections for a detector, per-output SQNR for raw tensors. The search works on
one part of the held-out images; the figure that decides and that reports publish comes from
the other part, which the search never saw (optimize/fidelity.py).

If a target is over budget, the other calibration methods (percentile, entropy; on TFLite the
mean of per-image ranges) are tried and the best kept, then the other bias-correction setting;
then layers are tried in float one at a time: first the model's first layers, then the rest
ranked by sensitivity (SQNR each node loses on calibration data, optimize/sensitivity.py), most
sensitive first. A layer stays in float only if it improves the score on the search images.
The search stops inside the budget or after `tries` layers; then every kept layer that is not
needed to stay within budget (or, over budget, to keep the score reached) goes back to int8.
Layers of a detector's head tail (optimize/keep_float.py) are float from the start and stay so.

fp16 targets are judged by the same yardstick and budget but not searched (there is no
calibration and no layer to keep in float): fp16's range ends at 65504, so a model with large
activations can come out as inf/NaN, and such a bundle must not be written unawares.

Why the first layers first: a float layer inside an int8 graph costs two conversions and stops
onnxruntime from fusing its neighbours into int8 kernels, while the first layers cost next to
nothing in float, since the input arrives in float anyway, and they often carry much of the
error. On EfficientNet-Lite0, rounding only the first depthwise conv's weights flipped about
9 % of the top-1 classes in an experiment here, and its first two layers in float ran as fast
as all-int8 side by side (1.65 vs 1.73 ms); the guard's result in benchmarks/bench_guard.py,
with three more float layers in the middle, fell from 2.0x to 1.4x FP32's speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import islice

from device_profiles import Target, load_schemes, qdq_scheme
from optimize import formats
from optimize.formats import Artifact, BuildContext
from optimize.formats.tflite import TFLITE_METHODS
from optimize.sensitivity import rank_nodes
from optimize.steps import StepContext, run_step
from optimize.tasks import Fidelity, Task

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
FIRST_LAYERS = 2  # how many of the model's first layers are tried in float before the ranking

# Evaluate an artifact on the guard's search images, in the task's terms.
Evaluate = Callable[[Target, Artifact], Fidelity]


@dataclass
class GuardOutcome:
    artifact: Artifact
    task: Task
    budget: float
    before: Fidelity
    after: Fidelity
    kept_float: list[str] = field(default_factory=list)
    tried: int = 0
    searched: bool = False
    could_search: bool = False  # over budget, and layers could go float (whether or not tried)
    calibration_method: str | None = None
    bias_correction: bool | None = None  # set when the search ran
    weights: dict[str, str] = field(default_factory=dict)  # kept node -> its weight's name
    float_tail: tuple[str, ...] = ()  # kept float before any search (optimize/keep_float.py)
    held_out: Fidelity | None = None  # on the images the search never saw (set by the engine)
    judged_only: bool = False  # fp16: measured once on the held-out images, nothing to search
    judged_as: str = ""  # how a judged-only artifact was run, when not as the bundle itself

    @property
    def verdict(self) -> Fidelity:
        """The figure that decides: the held-out one once measured."""
        return self.held_out or self.after

    @property
    def passed(self) -> bool:
        return self.verdict.within(self.budget)

    def to_dict(self) -> dict:
        return {"metric": self.after.metric, "unit": self.task.budget_unit,
                "budget": self.budget, "floor": self.task.floor_budget,
                "before": _brief(self.before), "after": _brief(self.after),
                "held_out": None if self.held_out is None else _brief(self.held_out),
                "passed": self.passed, "kept_float": self.kept_float,
                "kept_float_weights": self.weights, "float_tail": list(self.float_tail),
                "layers_tried": self.tried, "searched": self.searched,
                "calibration_method": self.calibration_method,
                "bias_correction": self.bias_correction, "judged_only": self.judged_only,
                "judged_as": self.judged_as}

    def shortfall(self) -> str:
        return self.task.shortfall_text(self.verdict, self.budget)


def _brief(f: Fidelity) -> dict:
    return {"value": round(f.value, 4), "loss": round(f.loss, 3), "images": f.images,
            "independent_images": f.independent, "columns": f.columns}


def judged_build(artifact: Artifact, fid: Fidelity, task: Task, budget: float,
                 judged_as: str = "") -> GuardOutcome:
    """An fp16 artifact's outcome: `fid`, measured on held-out images, decides as it stands
    (fp16 has nothing to search: no calibration, no layer to keep in float)."""
    return GuardOutcome(artifact, task, budget, fid, fid, held_out=fid, judged_only=True,
                        judged_as=judged_as)


def can_exclude(target: Target, ctx: BuildContext) -> bool:
    """Int8 paths that honour per-node exclusions: onnxruntime and OpenVINO, and TFLite built
    from an ONNX source (its ops carry the ONNX node names, optimize/formats/tflite.py)."""
    if target.precision != "int8":
        return False
    return target.format in ("onnx", "openvino") or (
        target.format == "tflite" and ctx.source.kind != "pytorch")


Build = Callable[[Target, BuildContext], Artifact]


def guarded_build(target: Target, ctx: BuildContext, evaluate: Evaluate, task: Task,
                  budget: float, tries: int = 16, notify: Callable[[str], None] | None = None,
                  build: Build = formats.build) -> GuardOutcome:
    artifact = build(target, ctx)
    fid = evaluate(target, artifact)
    outcome = GuardOutcome(artifact, task, budget, fid, fid, float_tail=ctx.exclude_nodes)
    if outcome.passed or not can_exclude(target, ctx) or ctx.calibration is None:
        return outcome
    outcome.could_search = True
    if tries <= 0:  # judge only: no other calibration method, no layer in float
        return outcome
    outcome.searched = True
    outcome.calibration_method = ctx.calibration_method
    outcome.bias_correction = ctx.bias_correction
    say = notify or (lambda text: None)  # a line per try: the search can take many minutes
    say(f"{task.shortfall_text(fid, budget)}: trying other calibration methods and up to "
        f"{tries} layers in float")
    best = fid
    for knob in _knobs(target, ctx):  # first the cheap knobs: ranges, then bias correction
        trial = knob(ctx)
        candidate = build(target, trial)
        fid = evaluate(target, candidate)
        changed = (f"calibration {trial.calibration_method}"
                   if trial.calibration_method != ctx.calibration_method else
                   f"bias correction {'on' if trial.bias_correction else 'off'}")
        say(f"{changed}: {_loss_text(fid)}")
        if fid.key() > best.key():
            best, ctx = fid, trial
            outcome.artifact, outcome.after = candidate, fid
            outcome.calibration_method = trial.calibration_method
            outcome.bias_correction = trial.bias_correction
            if outcome.passed:
                return outcome
    base = ctx.exclude_nodes
    for layers in islice(_candidates(target, ctx, outcome.kept_float), tries):
        outcome.tried += 1
        candidate = build(target, replace(ctx, exclude_nodes=(*base, *layers)))
        fid = evaluate(target, candidate)
        say(f"try {outcome.tried}/{tries}, {len(layers)} layer(s) in float: {_loss_text(fid)}")
        if fid.key() > best.key():
            best = fid
            outcome.kept_float[:] = layers
            outcome.artifact, outcome.after = candidate, fid
            if outcome.passed:
                break
    if outcome.kept_float:
        say(f"trying the {len(outcome.kept_float)} float layer(s) back in int8, one at a time")
    _drop_unneeded(target, ctx, evaluate, outcome, build)
    outcome.weights = _weight_names(ctx.source.onnx_path, outcome.kept_float)
    if outcome.artifact.record is not None:
        outcome.artifact.record = {**outcome.artifact.record,
                                   "excluded_nodes": [*base, *outcome.kept_float]}
    return outcome


def _loss_text(fid: Fidelity) -> str:
    """A guard trial's figure for its progress line."""
    if fid.floor:
        return f"{fid.metric} {fid.value:.1f} {fid.unit}"
    return f"loses {fid.loss:.1f} {fid.unit} ({fid.metric} {fid.value:.3f})"


def _drop_unneeded(target: Target, ctx: BuildContext, evaluate: Evaluate,
                   outcome: GuardOutcome, build: Build) -> None:
    """Put back into int8 every kept layer that is not needed, last kept first: needed to stay
    within budget, or (over budget) to keep the fidelity reached. Each float layer costs speed,
    the search keeps a layer for any gain, and the first layers are tried as a group."""
    for name in reversed(list(outcome.kept_float)):
        layers = tuple(n for n in outcome.kept_float if n != name)
        candidate = build(target, replace(ctx, exclude_nodes=(*ctx.exclude_nodes, *layers)))
        fid = evaluate(target, candidate)
        if fid.within(outcome.budget) or fid.key() >= outcome.after.key():
            outcome.kept_float[:] = layers
            outcome.artifact, outcome.after = candidate, fid


def _knobs(target: Target, ctx: BuildContext) -> list[Callable[[BuildContext], BuildContext]]:
    """Whole-model settings to try before any layer goes float: the other calibration methods,
    then bias correction switched (each applied to the best context found so far)."""
    if _uses_ort_calibration(target):
        methods, bias = CALIBRATION_METHODS, True
    elif target.format == "tflite":  # ai-edge-quantizer: min-max or its mean
        methods, bias = tuple(TFLITE_METHODS), False
    else:
        return []
    knobs: list[Callable[[BuildContext], BuildContext]] = [
        lambda c, m=method: replace(c, calibration_method=m)
        for method in methods if method != ctx.calibration_method]
    if bias:
        knobs.append(lambda c: replace(c, bias_correction=not c.bias_correction))
    return knobs


def _uses_ort_calibration(target: Target) -> bool:
    """onnxruntime's calibrator (and so --calib-method) makes this target's int8 ranges."""
    return target.format == "onnx" or "calibrate_with" in (target.scheme or {})


def _candidates(target: Target, ctx: BuildContext, kept: list[str]):
    """Sets of layers to try in float, one per try: the float prefix grown one layer at a
    time (the first layers go together: one float->int8 boundary), then what is kept so far
    plus the next layer by sensitivity. `kept` is read when each set is made."""
    first = first_layers(ctx.source.onnx_path, FIRST_LAYERS)
    for count in range(1, len(first) + 1):
        yield tuple(first[:count])
    for name in _ranking(target, ctx):
        if name not in first:
            yield (*kept, name)


def _weight_names(path, nodes: list[str]) -> dict[str, str]:
    """Node name -> its weight initializer's name: exported node names ("node_Conv_992") say
    little, weight names carry the framework's module path ("_conv_stem.weight")."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return {n.name: n.input[1] for n in graph.node
            if n.name in nodes and len(n.input) > 1 and n.input[1] in weights}


def first_layers(path, count: int) -> list[str]:
    """The first `count` Conv/Gemm/MatMul nodes with a constant weight, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
            and len(n.input) > 1 and n.input[1] in weights][:count]


def _ranking(target: Target, ctx: BuildContext) -> list[str]:
    """Nodes by sensitivity under the onnxruntime scheme that calibrates this target."""
    scheme = target.scheme
    if "calibrate_with" in scheme:
        scheme = qdq_scheme(scheme)
    elif target.format != "onnx":
        scheme = {"name": "ort-u8s8", **load_schemes()["ort-u8s8"]}
    key = ("ranking", scheme["name"])
    if key not in ctx.cache:
        qdq = ctx.unique_path("sensitivity", ".onnx")
        prepared = ctx.unique_path("prepared", ".onnx")
        step = StepContext(input_name=ctx.source.input_name, scheme=scheme,
                           calibration=ctx.calibration,
                           calibration_method=ctx.calibration_method, compact=False,
                           keep_prepared=prepared, bias_correction=ctx.bias_correction,
                           cache=ctx.cache)
        run_step("int8", ctx.source.onnx_path, qdq, step)
        ranked = rank_nodes(prepared, qdq, ctx.calibration, ctx.source.input_name, ctx.workdir)
        ctx.cache[key] = [node for node, _ in ranked]
    return ctx.cache[key]
