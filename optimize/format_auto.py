"""`--format auto`: build every format the device runs, time them here, keep the fastest that
stays within the accuracy budget.

Why measure instead of a fixed default per profile: which runtime wins depends on the model
(depthwise-heavy nets favour LiteRT's XNNPACK, dense convs often OpenVINO) and on the CPU, so
only timing the candidates on a CPU of the device's class can tell. That is only meaningful when
the build host is of the device's class (`Profile.runs_on_host`); elsewhere the profile's
default format stays and a note says so. With no --format, auto is the default on such a host
for the BY_DEFAULT precisions (int8), unless --scheme or --batch fixes the route.

Each candidate goes through the export's own accuracy guard (the figure that decides is the
held-out one); one that cannot be built, is over the memory budget or over the accuracy budget
is recorded with its reason and never chosen. The survivors are timed interleaved, round by
round (optimize.measure.time_interleaved), at the device's thread count, so the host's noise
hits all of them alike; one that does not load or run here is skipped with its reason. The
fastest is then offered to the engine's own checks (peak memory of a process running it): one
refused there is recorded and the next fastest offered, so no single candidate fails the export.
The record (`Selection`) goes into the report and the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import edge_sdk
from device_profiles import ProfileError, Target, host_arch, resolve_target
from edge_sdk.manifest import Manifest
from optimize import formats
from optimize.errors import ToolchainError
from optimize.formats import Artifact

AUTO = "auto"
DEFAULT = "default"  # --format default: each profile's own default format, nothing measured
ROUNDS = 3  # interleaved timing rounds per candidate
# Precisions measured when no --format is given (on a host of the device's CPU class). int8
# only: its routes differ in kernels and in quantizer, so in speed and fidelity alike
# (EfficientNet-Lite0 x86-int8: OpenVINO 1.06 ms / 0.941 top-1 agreement, LiteRT 1.02 / 0.961,
# onnxruntime 1.59 / 0.951, benchmarks/results/formats.md), and the export already pays for
# calibration and the guard. fp32/fp16 run the same float graph: there the profile's default
# was fastest or within 4 % (fp32 OpenVINO 2.43 ms, LiteRT 2.52, onnxruntime 3.19), so
# measuring would mostly triple a quick export (a TFLite conversion is the slowest build) to
# confirm it. int4 formats compress different layers (OpenVINO 4.5 MB, ONNX/LiteRT keep convs
# float: 14.2 MB), so choosing by speed alone could undo what int4 was asked for. All three
# stay one `--format auto` away.
BY_DEFAULT = ("int8",)


@dataclass(frozen=True)
class Candidate:
    """One format tried for a target, and why it was or was not chosen."""

    format: str
    latency_ms_p50: float | None = None  # None: not timed (failed before)
    fidelity: dict | None = None  # the guard's deciding figure: metric, value, loss, unit
    passed: bool = False  # built, within the memory and accuracy budgets
    chosen: bool = False
    reason: str | None = None  # why it failed, or None

    def text(self) -> str:
        if self.latency_ms_p50 is None:
            return f"{self.format} failed ({self.reason})"
        tail = " (chosen)" if self.chosen else "" if self.passed else f" ({self.reason})"
        return f"{self.format} {self.latency_ms_p50:.2f} ms{tail}"


@dataclass(frozen=True)
class Selection:
    """What `--format auto` measured for one target; `to_dict` is the manifest's
    `format_selection` section."""

    chosen: str
    host_arch: str
    threads: int
    rounds: int
    runs_per_round: int
    candidates: tuple[Candidate, ...]
    load_average: float | None = None  # the host's 1-minute load while timing
    mode: str = AUTO

    @property
    def busy(self) -> bool:
        """Other work shared the cores while timing: runtimes suffer unequally from it (in two
        runs at load ~5 on 2 cores OpenVINO timed 1.5-1.9x slower than onnxruntime, against
        1.0x in a longer interleaved run), so the choice deserves a re-run on a quiet host."""
        return self.load_average is not None and self.load_average > 0.75 * (os.cpu_count() or 1)

    def summary(self) -> str:
        """e.g. 'auto: tflite 1.78 ms (chosen), openvino 2.37 ms, onnx 3.63 ms'."""
        ranked = sorted(self.candidates, key=lambda c: (not c.chosen, c.latency_ms_p50 is None,
                                                        c.latency_ms_p50 or 0.0))
        busy = (f" [host busy, load {self.load_average:.1f}: re-run on a quiet host to be sure]"
                if self.busy else "")
        return "auto: " + ", ".join(c.text() for c in ranked) + busy

    def to_dict(self) -> dict:
        d = asdict(self)
        d["candidates"] = [asdict(c) for c in self.candidates]
        return d


@dataclass(frozen=True)
class AutoPlan:
    """A target whose format `--format auto` chooses among `formats` (its format field holds
    the profile's default until then)."""

    target: Target
    formats: tuple[str, ...]


def resolve(text: str, note: Callable[[str], None]) -> Target | AutoPlan:
    """`--target text --format auto`: an AutoPlan where this host is of the device's CPU class
    and the device runs more than one format for the precision; else the profile's default."""
    target = resolve_target(text)
    profile = target.profile
    if not profile.runs_on_host():
        note(f"{target.requested}: --format auto measures formats on a CPU of the device's "
             f"class; {profile.name} is {profile.cpu_arch}, this host {host_arch()}: using its "
             f"default format {target.format}")
        return target
    return _plan(target) or target


def resolve_default(text: str) -> Target | AutoPlan:
    """`--target text` with no --format: an AutoPlan for a BY_DEFAULT precision where this host
    is of the device's CPU class (timing here then says what is fastest there) and the device
    runs several formats for it; else the profile's default format, silently."""
    target = resolve_target(text)
    if target.precision not in BY_DEFAULT or not target.profile.runs_on_host():
        return target
    return _plan(target) or target


def default_note(plans: list[AutoPlan], requested: list[str]) -> str:
    """One line: which targets auto measures because no --format was given, and the flag that
    pins the format instead (the default's own name when every target accepts it)."""
    names = ", ".join(p.target.requested for p in plans)
    fmt = plans[0].target.format
    pin = fmt if len({p.target.format for p in plans}) == 1 else DEFAULT
    for text in requested:
        try:
            resolve_target(text, fmt)
        except ProfileError:  # e.g. jetson-int8 beside x86-int8 runs no OpenVINO
            pin = DEFAULT
    return f"{names}: --format auto by default on this {host_arch()} host; pin with --format {pin}"


def _plan(target: Target) -> AutoPlan | None:
    """The formats auto would choose among, when there is a choice."""
    candidates = tuple(f for f in target.profile.formats_for(target.precision)
                       if f in formats.FORMATS
                       and target.precision in formats.FORMATS[f].precisions)
    return AutoPlan(target, candidates) if len(candidates) >= 2 else None


@dataclass
class Built:
    """A candidate that was built and judged: its target, artifact, guard outcome (None where
    no guard runs: fp32, or too few held-out images), a staged bundle folder to time, and its
    fidelity when no guard measured it (recorded, not judged: no budget applies to fp32)."""

    target: Target
    artifact: Artifact
    outcome: object | None
    folder: Path
    fidelity: object | None = None  # optimize.tasks.Fidelity
    manifest: Manifest | None = None  # of the bundle staged in `folder`


def select(plan: AutoPlan, build: Callable[[Target], Built], images: list[np.ndarray] | None,
           threads: int, runs: int, progress,
           accept: Callable[[Built], object] | None = None) -> tuple[Built | None, Selection]:
    """Build, judge and time every candidate of `plan`; return the fastest within budget (or,
    when none is, the most faithful one built, for the engine to refuse or --force) and the
    record. `build` raises for a candidate that cannot be made, `accept` (the engine's last
    checks, e.g. peak memory) for one it will not ship; both are recorded, never fatal."""
    built: dict[str, Built] = {}
    failed: dict[str, Candidate] = {}
    for fmt in plan.formats:
        target = replace(plan.target, format=fmt)
        try:  # `build` shows its own stage, named after the candidate's format
            built[fmt] = build(target)
        except Exception as exc:  # noqa: BLE001 -- one candidate never fails the export
            failed[fmt] = _skipped(target, _reason(exc), progress)
    times, unrunnable = _time(built, images, threads, runs, progress, plan.target.requested)
    for fmt, reason in unrunnable.items():
        failed[fmt] = _skipped(replace(plan.target, format=fmt), reason, progress)
        del built[fmt]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    records: dict[str, Candidate] = {}
    for fmt, b in built.items():
        passed = b.outcome is None or b.outcome.passed
        reason = None if passed else f"over the accuracy budget: {b.outcome.shortfall()}"
        records[fmt] = Candidate(fmt, times[fmt], _fidelity(b), passed, False, reason)
    winner = None
    for c in sorted((c for c in records.values() if c.passed), key=lambda c: c.latency_ms_p50):
        try:
            if accept is not None:
                accept(built[c.format])
        except Exception as exc:  # noqa: BLE001 -- refused: offer the next fastest
            reason = _reason(exc)
            progress.note(f"{plan.target.requested} auto: {c.format} refused: {reason}")
            records[c.format] = replace(c, passed=False, reason=reason)
            continue
        winner = c
        break
    if winner is None:  # none within budget: the most faithful, refused later unless --force
        over = [c for c in records.values() if built[c.format].outcome is not None
                and not built[c.format].outcome.passed]
        winner = min(over, key=_loss, default=None)
    if winner is not None:
        records[winner.format] = replace(winner, chosen=True)
    records.update(failed)
    selection = Selection(
        chosen=winner.format if winner else "", host_arch=host_arch(), threads=threads,
        rounds=ROUNDS, runs_per_round=runs,
        candidates=tuple(records[f] for f in plan.formats),
        load_average=None if load is None else round(load, 2))
    return (built[winner.format] if winner else None), selection


def _skipped(target: Target, reason: str, progress) -> Candidate:
    progress.note(f"{target.requested} auto: {target.format} skipped: {reason}")
    return Candidate(target.format, reason=reason)


def _loss(c: Candidate) -> float:
    """How far from FP32 (lower is better); a candidate without a figure ranks last."""
    return c.fidelity["loss"] if c.fidelity else float("inf")


def _time(built: dict[str, Built], images: list[np.ndarray] | None, threads: int, runs: int,
          progress, label: str) -> tuple[dict[str, float], dict[str, str]]:
    """p50 ms per candidate, interleaved rounds at the device's thread count, and why each
    candidate that does not load or run here was left out (one call each, before timing)."""
    from optimize.measure import time_interleaved, time_model

    models: dict[str, edge_sdk.Model] = {}
    unrunnable: dict[str, str] = {}
    for f, b in built.items():
        try:
            models[f] = edge_sdk.load(b.folder, threads=threads, verify=False)
        except Exception as exc:  # noqa: BLE001 -- recorded, the others are still timed
            unrunnable[f] = f"does not load here: {_reason(exc)}"
    if not models:
        return {}, unrunnable
    if not images:
        rng = np.random.default_rng(0)
        shape = next(iter(models.values())).manifest.inputs[0].shape
        images = [rng.uniform(-1, 1, shape).astype(np.float32)]
    for f, m in list(models.items()):
        try:
            time_model(m, images[:1], 1, warmup=0)
        except Exception as exc:  # noqa: BLE001 -- recorded, the others are still timed
            unrunnable[f] = f"does not run here: {_reason(exc)}"
            del models[f]
    if not models:
        return {}, unrunnable
    with progress.stage(f"{label} auto: timing {', '.join(models)} ({ROUNDS} rounds x {runs})"):
        times = time_interleaved(models, {f: images for f in models}, ROUNDS, runs)
    return {f: float(np.percentile(t, 50)) for f, t in times.items()}, unrunnable


def _fidelity(b: Built) -> dict | None:
    """The deciding figure: the guard's held-out verdict, else the one measured without a
    budget."""
    v = b.outcome.verdict if b.outcome is not None else b.fidelity
    if v is None:
        return None
    out = {"metric": v.metric, "value": round(float(v.value), 4),
           "loss": round(float(v.loss), 3), "unit": v.unit}
    if b.outcome is not None:
        out["budget"] = float(b.outcome.budget)
    return out


def _reason(exc: Exception) -> str:
    """One line, short enough for a report cell and the manifest."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = "" if isinstance(exc, ToolchainError) else f"{type(exc).__name__}: "
    return (kind + text)[:300] or type(exc).__name__
