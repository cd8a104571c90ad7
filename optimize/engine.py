"""The export engine: one FP32 export and one calibration pass, then one bundle per target.

    source (.onnx | file.py:fn) -> fp32.onnx -> [fp16 | int8 | int4 step] -> bundle -> measure
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import edge_sdk
from device_profiles import Target, resolve_target
from edge_sdk.errors import EdgeError
from edge_sdk.manifest import InputSpec, Manifest, OutputSpec, TaskSpec
from optimize import format_auto, formats, report, score_calibration
from optimize.bundle import check_destination, runtime_spec, update_metrics, write_bundle
from optimize.calibration import ImageSet, list_images, load_images
from optimize.errors import CalibrationError, ToolchainError
from optimize.fidelity import (
    GUARD_MIN_IMAGES,
    HeldOut,
    all_outputs,
    in_reference_layout,
    judge,
    split_held_out,
    subset,
)
from optimize.flat_outputs import flat_outputs_warning
from optimize.format_auto import AUTO, DEFAULT, AutoPlan, Built
from optimize.formats import Artifact, BuildContext
from optimize.guard import GuardOutcome, guarded_build, judged_build
from optimize.intake import (
    DEFAULT_OPSET,
    export_torch,
    is_pytorch_spec,
    is_torchscript,
    is_traced_graph,
    load_source,
    load_torch_module,
)
from optimize.keep_float import keep_float_nodes
from optimize.measure import Metrics, host_threads, measure_bundle
from optimize.modelcard import (
    ModelCard,
    check_decoder_fits,
    input_spec,
    resolve_card,
    task_spec,
)
from optimize.progress import Progress
from optimize.steps import fp16
from optimize.tasks import Scoring, get_task
from optimize.throughput import Throughput, measure_throughput, throughput_text


@dataclass
class ExportRequest:
    model: str
    targets: list[str]
    out: Path
    # a format, "auto" (optimize/format_auto.py), "default" (each profile's), or None: auto
    # where format_auto.resolve_default says so, else the profile's default
    fmt: str | None = None
    calib: Path | None = None
    eval: Path | None = None
    input_shape: tuple[int, ...] | None = None
    card: ModelCard = field(default_factory=ModelCard)
    card_path: Path | None = None
    calib_size: int = 300
    calibration_method: str = "minmax"
    bias_correction: bool | None = None  # int8 bias correction; None: the task's default
    scheme: str | None = None  # overrides the profiles' int8/int4 scheme where it fits
    max_drop: float | None = None  # accuracy budget in the task's unit; None: its default
    force: bool = False  # write bundles that fail the accuracy guard anyway
    guard_tries: int = 16  # layers the guard may try in float
    float_tail: bool = True  # int8: keep a detector/raw head's tail float (keep_float.py)
    score_calibration: bool = True  # int8 detectors: fit the decoder's score_shift
    prune: float | None = None  # fraction of channels to remove (PyTorch sources)
    prune_macs: float | None = None  # or: keep at most this fraction of the MACs
    finetune: str | None = None  # file.py:fn that trains the pruned model for a few steps
    opset: int | None = None  # PyTorch sources only; None: DEFAULT_OPSET
    runs: int = 50
    batch: int = 1  # >1: dynamic batch dimension, runtime.max_batch (ONNX, OpenVINO)
    progress: bool = True
    overwrite: bool = False  # replace OUT/TARGET and OUT/report.* even if not edge-opt's


@dataclass(frozen=True)
class TargetResult:
    target: Target
    folder: Path
    metrics: Metrics
    step: dict | None
    reference: Metrics  # the FP32 model measured at the same thread count
    runtime_options: dict = field(default_factory=dict)
    guard: dict | None = None  # what the accuracy guard measured and kept in float
    speed_note: str | None = None  # set when it is not faster than FP32 on its own runtime
    guard_shortfall: str | None = None  # how far over budget, when written with --force
    peak_rss_bytes: int | None = None  # of a process loading and running the bundle
    format_selection: dict | None = None  # what --format auto measured (format_auto.Selection)
    throughput: dict | None = None  # --batch N: images/s at batch 1 and N (optimize/throughput)


@dataclass(frozen=True)
class ExportResult:
    reference: Metrics
    results: list[TargetResult]
    rows: list[dict]  # the combined report table, FP32 reference first
    notes: list[str]  # how to read the table
    report_md: Path
    report_json: Path
    warnings: list[str] = field(default_factory=list)  # what the user must know, one line each
    # targets not written (their one-line reason and fix, by requested name); the others were
    unwritten: dict[str, str] = field(default_factory=dict)


def _check_batch(req: ExportRequest) -> None:
    """--batch N keeps an ONNX source's dynamic batch dimension (every format: ONNX, OpenVINO,
    and TFLite converted with a batch dimension of 1..N)."""
    if req.batch == 1:
        return
    if req.batch > 256:
        raise ToolchainError(f"--batch {req.batch}: at most 256 frames per call")
    if is_pytorch_spec(req.model):
        raise ToolchainError("--batch needs an ONNX source with a dynamic batch dimension; "
                             "export the PyTorch model to ONNX with a dynamic batch axis first")


def _resolve_targets(req: ExportRequest, notes: list[str]
                     ) -> tuple[list[Target], dict[str, AutoPlan]]:
    """The targets (auto ones hold their profile's default format until chosen) and, by
    requested name, the targets whose format --format auto chooses: every one that can with
    --format auto; with no --format, format_auto.BY_DEFAULT precisions on a host of the
    device's class, unless --scheme or --batch already fixes the route."""
    twice = sorted({t for t in req.targets if req.targets.count(t) > 1})
    if twice:
        raise ToolchainError(f"--target {', '.join(twice)} given more than once; each target "
                             "builds one bundle (OUT/TARGET): give it once")
    if req.fmt not in (None, AUTO) or (req.fmt is None and (req.scheme is not None
                                                            or req.batch != 1)):
        fmt = None if req.fmt in (None, DEFAULT) else req.fmt
        return [resolve_target(t, fmt) for t in req.targets], {}
    resolve = (format_auto.resolve_default if req.fmt is None
               else lambda text: format_auto.resolve(text, notes.append))
    targets, plans = [], {}
    for text in req.targets:
        resolved = resolve(text)
        if isinstance(resolved, AutoPlan):
            plans[resolved.target.requested] = resolved
            resolved = resolved.target
        targets.append(resolved)
    if plans and req.fmt is None:
        notes.append(format_auto.default_note(list(plans.values()), req.targets))
    if plans and req.scheme is not None:
        raise ToolchainError(f"--scheme {req.scheme} is one format's recipe: use it with "
                             "--format FORMAT, not --format auto")
    if plans and req.batch != 1:
        raise ToolchainError("--format auto times batch-1 bundles; with --batch use "
                             "--format onnx or --format openvino")
    return targets, plans


def export(req: ExportRequest) -> ExportResult:
    progress = Progress(req.progress)
    # Check everything the user typed before any heavy work.
    auto_notes: list[str] = []
    targets, plans = _resolve_targets(req, auto_notes)
    for text in auto_notes:
        progress.note(text)
    if req.scheme is not None:
        chosen = [t.with_scheme(req.scheme) for t in targets]
        if not any(chosen):
            raise ToolchainError(f"scheme {req.scheme} fits none of the targets (it is for "
                                 "another format or precision); `edge-opt profiles show "
                                 "PROFILE` lists the schemes per format")
        targets = [c or t for c, t in zip(chosen, targets)]
    for target in targets:
        formats.check_supported(target)
    _check_batch(req)
    check_destination(req.out, [t.requested for t in targets], req.overwrite)
    needs_calib = any(t.precision == "int8" for t in targets)
    if needs_calib and req.calib is None:
        names = ", ".join(t.requested for t in targets if t.precision == "int8")
        raise CalibrationError(f"{names} needs calibration images: pass --calib DIR with "
                               "50-500 typical input images")
    finetune = _check_pruning(req)
    if req.calib is not None:
        list_images(req.calib, "calibration")
    if req.eval is not None:
        list_images(req.eval, "evaluation")

    if req.opset is not None and not is_pytorch_spec(req.model):
        raise ToolchainError(f"--opset {req.opset} applies to PyTorch models (file.py:fn), which "
                             "edge-opt converts to ONNX; an ONNX model keeps its own opset: drop "
                             "--opset")
    opset = DEFAULT_OPSET if req.opset is None else req.opset
    workdir = Path(tempfile.mkdtemp(prefix="edge-opt-"))
    try:
        module, pruning, unpruned = None, None, None
        with progress.stage(f"loading {req.model}"):
            if is_pytorch_spec(req.model):
                module = load_torch_module(req.model)
            else:
                source = load_source(req.model, workdir, req.input_shape, opset,
                                     batch=req.batch)
        if module is not None and (req.prune is not None or req.prune_macs is not None):
            if is_traced_graph(module):
                kind = "TorchScript" if is_torchscript(module) else "torch.export"
                raise ToolchainError(f"{req.model} returned a {kind} module, which "
                                     "torch-pruning cannot rewrite; --prune needs a factory that "
                                     "builds the model's own nn.Module class")
            import torch

            from optimize.prune import prune

            with progress.stage("pruning" + (" and fine-tuning" if finetune else "")):
                torch.manual_seed(0)
                pruning = prune(module, torch.rand(*req.input_shape), ratio=req.prune,
                                macs_budget=req.prune_macs, finetune=finetune)
            (workdir / "unpruned").mkdir()
            with progress.stage("exporting the unpruned model to ONNX"):
                unpruned = export_torch(module, req.model, workdir / "unpruned",
                                        req.input_shape, opset=opset)
            module = pruning.module
        if module is not None:  # the longest silent step of a PyTorch export otherwise
            with progress.stage("exporting to ONNX (torch.onnx.export, onnxslim)"):
                source = export_torch(module, req.model, workdir, req.input_shape, opset=opset)
        card = resolve_card(source, req.card, req.card_path)
        _check_label_count(card, source.output_shapes)
        check_decoder_fits(source, card)
        task = get_task(card.task)
        task.check_budget(req.max_drop)  # before calibration and the FP32 reference
        spec = input_spec(source, card)
        calib, evaluation = _image_sets(req, spec, progress, auto_notes)
        guarded = any(t.precision in ("int8", "int4") for t in targets)
        held = mark_calibration_overlap(split_held_out(evaluation, guarded), calib)
        overlap = calibration_overlap_warning(held)
        if overlap:
            progress.note(f"warning: {overlap}")
        reference_dir = workdir / "reference"
        fp32_target = resolve_target(f"{targets[0].profile.name}-fp32", "onnx")
        outputs = tuple(OutputSpec(n, s) for n, s in zip(source.output_names, source.output_shapes))
        source_record = source.to_dict()
        if pruning is not None:
            source_record["pruning"] = pruning.to_dict()
        common = dict(inputs=(spec,), outputs=outputs, task=task_spec(card, source),
                      labels=card.labels, source=source_record)
        write_bundle(reference_dir, fp32_target, {"model": source.onnx_path},
                     runtime_spec(fp32_target, "onnxruntime", {}), quantization=None,
                     calibration_stats=None, **common)
        threads = host_threads(max(t.profile.threads for t in targets))
        fp32_outputs = _reference_outputs(reference_dir, held, threads)
        flat = _flat_outputs_warning(held, fp32_outputs, spec)
        if flat:
            progress.note(f"warning: {flat}")
        report_images = held.report if held else None
        reference_outputs = fp32_outputs.report if fp32_outputs else None
        stats = _calibration_stats(calib or evaluation, reference_dir, threads)
        references: dict[int, Metrics] = {}

        def reference_at(n: int) -> Metrics:
            if n not in references:
                references[n] = _measure(reference_dir, "fp32 reference", n, report_images,
                                         reference_outputs, req.runs, progress)
            return references[n]

        ref_metrics = reference_at(threads)
        unpruned_metrics, pruning_warning = None, None
        if unpruned is not None:
            folder = workdir / "unpruned-bundle"
            write_bundle(folder, fp32_target, {"model": unpruned.onnx_path},
                         runtime_spec(fp32_target, "onnxruntime", {}), quantization=None,
                         calibration_stats=None, **common)
            unpruned_metrics = _measure(folder, "fp32 before pruning", threads, report_images,
                                        reference_outputs, req.runs, progress)
            if report_images is not None:
                pruning_warning = _judge_pruning(folder, reference_dir, report_images, threads,
                                                 source_record["pruning"], task,
                                                 task.budget(req.max_drop,
                                                             targets[0].profile.max_drop))
                if pruning_warning:
                    progress.note(f"warning: {pruning_warning}")
        results = []
        tail = ()
        if any(t.precision == "int8" for t in targets):
            tail = tuple(keep_float_nodes(source.onnx_path,
                                          tail=req.float_tail and task.float_tail))
            if tail:
                progress.note(f"keeping {len(tail)} op(s) in float that int8 cannot hold "
                              "(a detector head's tail, attention)")
        ctx = BuildContext(source=source, input_spec=spec, outputs=outputs, workdir=workdir,
                           calibration=calib, calibration_method=req.calibration_method,
                           bias_correction=(task.bias_correction if req.bias_correction is None
                                            else req.bias_correction), torch_module=module,
                           exclude_nodes=tail, batch=req.batch)

        def bundle(target: Target, artifact: Artifact, folder: Path) -> Manifest:
            runtime = runtime_spec(target, target.backend, artifact.runtime_options)
            runtime = replace(runtime, max_batch=req.batch)
            task_params = {**common["task"].params, **artifact.task_params}
            return write_bundle(
                folder, target, artifact.files, runtime, quantization=artifact.record,
                overwrite=req.overwrite,
                calibration_stats=stats, **{**common, "inputs": artifact.inputs or common["inputs"],
                                            "outputs": artifact.outputs or common["outputs"],
                                            "task": replace(common["task"], params=task_params)})

        def evaluate_on(images, ref_outputs):
            def evaluate(target: Target, artifact: Artifact):
                folder = ctx.unique_path("guard", "")
                bundle(target, artifact, folder)
                model = edge_sdk.load(folder, threads=threads, verify=False)
                return judge(model, images, ref_outputs)
            return evaluate

        calib_reference: list = []  # FP32's outputs on the calibration images, made once

        def build(target: Target, context: BuildContext) -> Artifact:
            """The target's artifact; an int8 detector's scores calibrated against FP32's on
            the calibration images (optimize/score_calibration.py)."""
            artifact = formats.build(target, context)
            if (target.precision != "int8" or not (req.score_calibration
                                                   and task.score_calibration)
                    or calib is None or not _takes_score_shift(common["task"], card.labels)):
                return artifact
            if not calib_reference:
                calib_reference.append(all_outputs(
                    edge_sdk.load(reference_dir, threads=threads, verify=False), calib))
            folder = ctx.unique_path("scores", "")
            manifest = bundle(target, artifact, folder)
            model = edge_sdk.load(folder, threads=threads, verify=False)
            reference = calib_reference[0]
            got = [[in_reference_layout(r, g) for r, g in zip(ref, out)]
                   for ref, out in zip(reference, all_outputs(model, calib))]
            shift = score_calibration.fit(reference, got, Scoring(
                task=manifest.task, labels=manifest.labels, image_names=calib.names,
                output_names=tuple(o.name for o in manifest.outputs)))
            shutil.rmtree(folder, ignore_errors=True)
            if shift.value:
                artifact.task_params = {**artifact.task_params, "score_shift": shift.value}
            artifact.record = {**(artifact.record or {}), "score_calibration": shift.to_dict()}
            return artifact

        fp32_timings: dict[tuple[str, int], Metrics] = {}

        def fp32_same_runtime(target: Target, n: int) -> Metrics:
            """FP32 on the target's own format and runtime, for the speed guard."""
            key = (target.format, n)
            if target.format == "onnx":
                return reference_at(n)
            if key not in fp32_timings:
                fp32 = resolve_target(f"{target.profile.name}-fp32", target.format)
                folder = ctx.unique_path("fp32-" + target.format, "")
                bundle(fp32, formats.build(fp32, ctx), folder)
                fp32_timings[key] = _measure(folder, f"fp32 {target.format}", n, report_images,
                                             None, req.runs, progress)
            return fp32_timings[key]

        def build_judged(target: Target) -> tuple[Artifact, GuardOutcome | None]:
            """The target's artifact and, for int8/int4 with held-out images, the guard's
            outcome, whose deciding figure comes from images its search never saw; fp16 is
            judged on those images too (its range can overflow), fp32 only measured."""
            budget = task.budget(req.max_drop, target.profile.max_drop)
            with progress.stage(f"{target.requested}: {target.format} {target.precision}"):
                if target.precision in ("int8", "int4") and held and held.search is not None:
                    outcome = guarded_build(target, ctx, evaluate_on(held.search,
                                                                     fp32_outputs.search),
                                            task, budget, req.guard_tries, progress.note,
                                            build)
                    outcome.held_out = evaluate_on(held.report, fp32_outputs.report)(
                        target, outcome.artifact)
                    return outcome.artifact, outcome
                artifact = build(target, ctx)
                if target.precision == "fp16" and _enough_to_judge(held):
                    judged, how = _as_fp16_runs(target, artifact, ctx)
                    fid = evaluate_on(held.report, fp32_outputs.report)(target, judged)
                    return artifact, judged_build(artifact, fid, task, budget, how)
                return artifact, None

        def build_candidate(target: Target) -> Built:
            """One --format auto candidate, judged and staged in a folder to be timed."""
            artifact, outcome = build_judged(target)
            _check_budget(target, artifact)
            folder = ctx.unique_path(f"auto-{target.format}", "")
            manifest = bundle(target, artifact, folder)
            fidelity = None
            if outcome is None and held is not None:  # fp32 (or too few images): not judged
                fidelity = judge(edge_sdk.load(folder, threads=threads, verify=False),
                                 held.report, fp32_outputs.report)
            return Built(target, artifact, outcome, folder, fidelity, manifest)

        peaks: dict[Path, int | None] = {}

        def accept_candidate(b: Built) -> None:
            """The chosen candidate's peak memory, measured on its staged bundle: one over the
            profile's budget is refused here, and --format auto offers the next fastest."""
            peaks[b.folder] = _check_peak_memory(b.target, b.folder, b.manifest, workdir)

        failed: list[tuple[Target, GuardOutcome]] = []
        notes = list(auto_notes)

        def export_target(target: Target) -> TargetResult | None:
            """Build, write and measure one target's bundle; None when the accuracy guard
            refused it (recorded in `failed`)."""
            selection = None
            plan = plans.get(target.requested)
            if plan is not None:
                images = list(report_images.tensors) if report_images else None
                chosen, selection = format_auto.select(
                    plan, build_candidate, images, host_threads(target.profile.threads),
                    req.runs, progress, accept_candidate)
                progress.note(f"{target.requested} {selection.summary()}")
                notes.append(f"{target.requested}: {selection.summary()}")
                if chosen is None:
                    raise ToolchainError(f"{target.requested}: --format auto found no usable "
                                         f"format among {', '.join(plan.formats)} "
                                         f"({selection.summary()}); pick one with --format")
                target, artifact, outcome = chosen.target, chosen.artifact, chosen.outcome
            else:
                chosen = None
                artifact, outcome = build_judged(target)
            if outcome and not outcome.passed and not req.force:
                failed.append((target, outcome))
                return None
            _check_budget(target, artifact)
            if chosen is not None and chosen.folder in peaks:  # measured when auto chose it
                peak = peaks[chosen.folder]
            else:
                staged = ctx.unique_path("memory", "")  # measured before it may replace a bundle
                peak = _check_peak_memory(target, staged, bundle(target, artifact, staged),
                                          workdir)
            folder = req.out / target.requested
            manifest = bundle(target, artifact, folder)
            if selection is not None:
                manifest = replace(manifest, format_selection=selection.to_dict())
                manifest.write(folder)
            t_threads = host_threads(target.profile.threads)
            metrics = _measure(folder, target.requested, t_threads, report_images,
                               reference_outputs, req.runs, progress)
            throughput = measure_throughput(folder, t_threads, req.batch, report_images, progress)
            if throughput is not None:
                notes.append(throughput_text(target.requested, throughput.to_dict()))
            reference = reference_at(t_threads)
            speed_note = None
            if target.precision != "fp32" and _runs_here(target):
                same = fp32_same_runtime(target, t_threads)
                if metrics.latency_ms_p50 >= 0.97 * same.latency_ms_p50:
                    speed_note = (f"{target.requested} is not faster than fp32 on "
                                  f"{target.backend} here ({metrics.latency_ms_p50:.2f} vs "
                                  f"{same.latency_ms_p50:.2f} ms p50)")
            guard = outcome.to_dict() if outcome else None
            update_metrics(folder, manifest, {**_metrics_for_manifest(metrics, reference),
                                              "accuracy_guard": guard, "speed_note": speed_note,
                                              "peak_rss_bytes": peak,
                                              **_throughput_metrics(throughput)})
            shortfall = outcome.shortfall() if outcome and not outcome.passed else None
            return TargetResult(target, folder, metrics, artifact.record, reference,
                                manifest.runtime.options, guard, speed_note, shortfall, peak,
                                selection.to_dict() if selection else None,
                                _throughput_metrics(throughput).get("throughput"))

        errors: dict[str, str] = {}
        for target in targets:
            try:
                result = export_target(target)
            except EdgeError as exc:  # one target's refusal must not cost the others
                text = str(exc)
                errors[target.requested] = (text if text.startswith(target.requested)
                                            else f"{target.requested}: {text}")
                progress.note(f"{target.requested}: not written")
                continue
            if result is not None:
                results.append(result)
        for t, outcome in failed:
            errors[t.requested] = _guard_message([(t, outcome)], req.guard_tries)
        unwritten = {t.requested: errors[t.requested] for t in targets if t.requested in errors}
        if not results:  # nothing new: OUT's earlier report (if any) still describes OUT
            raise ToolchainError("; ".join(unwritten.values()) if len(unwritten) > 1
                                 else next(iter(unwritten.values())))
        for r in results:
            report.write_bundle_report(r, source)
        if held is not None and not failed and not any(
                r.guard and not r.guard["judged_only"] for r in results):
            held = replace(held, search=None)  # no guard searched (int4/int8 targets refused)
        md, js = report.write_combined(req.out, results, ref_metrics, source, calib, held,
                                       unpruned_metrics, source_record.get("pruning"), task,
                                       unwritten)
        rows = report.combined_rows(results, ref_metrics, source, unpruned_metrics)
        result = ExportResult(ref_metrics, results, rows,
                              report.notes(source, rows, task, held) + notes, md, js,
                              [w for w in (overlap, flat, pruning_warning) if w], unwritten)
        if unwritten:
            raise PartialExport(result)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _image_sets(req: ExportRequest, spec, progress: Progress, notes: list[str]
                ) -> tuple[ImageSet | None, ImageSet | None]:
    """Calibration and held-out images; without --eval, every 5th calibration image is held out.
    Files that are not readable images are skipped and said in `notes` (the report's)."""
    calib = evaluation = None
    if req.calib is not None:
        n = min(len(list_images(req.calib, "calibration")), req.calib_size)
        with progress.bar(n, "reading calibration images") as bar:
            calib = load_images(req.calib, spec, "calibration", req.calib_size, bar)
    if req.eval is not None:
        n = len(list_images(req.eval, "evaluation"))
        with progress.bar(n, "reading evaluation images") as bar:
            evaluation = load_images(req.eval, spec, "evaluation", None, bar)
    for role, images in (("calibration", calib), ("evaluation", evaluation)):
        if images is not None and images.skipped:
            shown = ", ".join(images.skipped[:3]) + (", ..." if len(images.skipped) > 3 else "")
            notes.append(f"{role}: skipped {len(images.skipped)} file(s) in {images.folder} "
                         f"that are not whole, readable images ({shown})")
    if evaluation is None and calib is not None and len(calib) >= 5:
        held = set(range(0, len(calib), 5))
        keep = [i for i in range(len(calib)) if i not in held]
        evaluation = subset(calib, sorted(held))
        calib = subset(calib, keep)
    return calib, evaluation


def mark_calibration_overlap(held: HeldOut | None, calib: ImageSet | None) -> HeldOut | None:
    """Count the held-out images that are also calibration images, by file contents (the same
    folder twice, one inside the other, or copies): figures on them are not from unseen images,
    so the report must not call them held out."""
    if held is None or calib is None or not calib.digests:
        return held
    seen = set(calib.digests)

    def count(images: ImageSet | None) -> int:
        return 0 if images is None else sum(d in seen for d in images.digests)

    return replace(held, report_in_calib=count(held.report), search_in_calib=count(held.search))


def calibration_overlap_warning(held: HeldOut | None) -> str | None:
    """One line for the user when evaluation and calibration images overlap."""
    if held is None or not (held.report_in_calib or held.search_in_calib):
        return None
    n = held.report_in_calib + held.search_in_calib
    total = len(held.report) + (0 if held.search is None else len(held.search))
    return (f"{n} of the {total} evaluation images are also calibration images (same file "
            "contents), so the accuracy figures are not from unseen images; for an honest "
            "figure give --eval images that are not in --calib (nor copies of them)")


@dataclass(frozen=True)
class ReferenceOutputs:
    """The FP32 model's outputs on each part of the held-out images."""

    search: list | None
    report: list


def _reference_outputs(folder: Path, held: HeldOut | None, threads: int
                       ) -> ReferenceOutputs | None:
    if held is None:
        return None
    model = edge_sdk.load(folder, threads=threads)
    search = None if held.search is None else all_outputs(model, held.search)
    return ReferenceOutputs(search, all_outputs(model, held.report))


def _flat_outputs_warning(held: HeldOut | None, fp32: ReferenceOutputs | None,
                          spec: InputSpec) -> str | None:
    """FP32's outputs on every held-out image, judged for a model that sees nothing (the
    wrong input range): optimize/flat_outputs.py."""
    if held is None or fp32 is None:
        return None
    parts = [(held.report, fp32.report), (held.search, fp32.search)]
    inputs = [t for images, _ in parts if images is not None for t in images.tensors]
    outputs = [o for images, outs in parts if images is not None for o in outs]
    return flat_outputs_warning(inputs, outputs, spec)


def _calibration_stats(images: ImageSet | None, reference_dir: Path, threads: int) -> dict | None:
    """Brightness (and, for classifiers, top-1 confidence) histograms for drift checks."""
    if images is None:
        return None
    from optimize.measure import model_outputs

    edges = np.linspace(0, 255, 17)
    counts, _ = np.histogram(images.brightness, bins=edges)
    stats = {"images": len(images),
             "brightness": {"edges": edges.tolist(), "fractions": (counts / counts.sum()).tolist()}}
    model = edge_sdk.load(reference_dir, threads=threads)
    if model.manifest.task.type == "classify":
        logits = model_outputs(model, images).reshape(len(images), -1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        conf = (e / e.sum(1, keepdims=True)).max(1)
        c_edges = np.linspace(0, 1, 11)
        c_counts, _ = np.histogram(conf, bins=c_edges)
        stats["top1_confidence"] = {"edges": c_edges.tolist(),
                                    "fractions": (c_counts / c_counts.sum()).tolist()}
    return stats


def _measure(folder, label, threads, evaluation, reference, runs, progress) -> Metrics:
    with progress.bar(runs, f"timing {label}") as bar:
        return measure_bundle(folder, threads, evaluation, reference, runs, bar)


def _judge_pruning(unpruned: Path, pruned: Path, images: ImageSet, threads: int,
                   record: dict, task, budget: float) -> str | None:
    """The pruned FP32 model judged against the unpruned one by the task's yardstick, kept
    in the pruning record: the guard judges quantization against the pruned model, so a
    pruning that broke the model (no fine-tuning) would otherwise pass unseen. Returns a
    warning when it is over the budget the guard holds quantization to."""
    reference = all_outputs(edge_sdk.load(unpruned, threads=threads, verify=False), images)
    fid = judge(edge_sdk.load(pruned, threads=threads, verify=False), images, reference)
    record["fidelity_vs_unpruned"] = fid.to_dict()
    if fid.within(budget):
        return None
    return (f"against the unpruned model on {fid.images} held-out images, pruning alone "
            f"{task.shortfall_text(fid, budget)}: fine-tune the pruned model (--finetune "
            "file.py:fn) or prune less")


def _check_pruning(req: ExportRequest):
    """Validate the pruning flags before any heavy work; returns the fine-tune hook, if any."""
    from optimize.prune import PruneError, check_args, load_finetune

    pruning = req.prune is not None or req.prune_macs is not None
    if not pruning and not req.finetune:
        return None
    if not is_pytorch_spec(req.model):
        raise PruneError("--prune needs a PyTorch source (file.py:fn), not an ONNX file")
    if not pruning:
        raise PruneError("--finetune runs on the pruned model; add --prune or --prune-macs")
    if req.input_shape is None:
        raise PruneError("pruning a PyTorch model needs --input-shape, e.g. 1x3x224x224")
    check_args(req.prune, req.prune_macs)
    return load_finetune(req.finetune) if req.finetune else None


def _throughput_metrics(throughput: Throughput | None) -> dict:
    return {} if throughput is None else {"throughput": throughput.to_dict()}


def _runs_here(target: Target) -> bool:
    """Whether this host runs the target on the device's own runtime (not a Jetson's GPU)."""
    if target.backend != "onnxruntime":
        return True
    import onnxruntime

    return target.profile.execution_providers[0] in onnxruntime.get_available_providers()


class PartialExport(ToolchainError):
    """Some targets were written (with their reports), others not: raised so that a caller
    cannot take a partial export for a whole one; `result` holds what was written and, in
    `result.unwritten`, why each other target was not."""

    def __init__(self, result: ExportResult) -> None:
        super().__init__("; ".join(result.unwritten.values()))
        self.result = result


def _as_fp16_runs(target: Target, artifact: Artifact, ctx: BuildContext
                  ) -> tuple[Artifact, str]:
    """The artifact to judge an fp16 target by, and how it runs: an ONNX graph with its
    activations rounded to float16 as TensorRT and CUDA store them (onnxruntime's x86 CPU
    keeps them float32 and would hide an overflow, optimize/steps/fp16.py); OpenVINO
    (pinned to f32) and TFLite (fp16 weights, float32 math) as they are."""
    if target.format != "onnx":
        return artifact, ""
    emulated = ctx.unique_path("fp16-emulated", ".onnx")
    fp16.emulate(artifact.files["model"], emulated)
    return (replace(artifact, files={**artifact.files, "model": emulated}),
            "activations rounded to float16, as TensorRT and CUDA store them")


def _enough_to_judge(held: HeldOut | None) -> bool:
    """Held-out images enough for a verdict: as many as the int8 guard needs (below that one
    flipped image moves top-1 agreement by over 5 points); after an int8 split, its part."""
    return held is not None and (held.search is not None or len(held.report) >= GUARD_MIN_IMAGES)


def _guard_message(failed: list[tuple[Target, GuardOutcome]], tries: int) -> str:
    parts = []
    for target, o in failed:
        kept = f" with {len(o.kept_float)} layer(s) kept in float" if o.kept_float else ""
        where = (" on held-out images its search did not see"
                 if o.held_out is not None and o.after.within(o.budget) else "")
        parts.append(f"{target.requested} {o.shortfall()}{kept}{where}")
    more = (f", let the guard try more layers (--guard-tries {max(2 * tries, 16)})"
            if any(o.could_search and o.tried >= tries for _, o in failed) else "")
    accept = _accept_hint([o for _, o in failed])
    return ("; ".join(parts) + f"; not written. Accept it with {accept}{more} or write it "
            "anyway with --force")


def _accept_hint(outcomes: list[GuardOutcome]) -> str:
    """The budget flag value that would let every failed target through."""
    if outcomes[0].task.floor_budget:
        return f"--max-drop {min(o.verdict.value for o in outcomes) - 0.1:.1f} (an SQNR floor, dB)"
    return f"--max-drop {max(o.verdict.loss for o in outcomes) + 0.1:.1f}"


def _check_budget(target: Target, artifact: Artifact) -> None:
    size_mb = sum(p.stat().st_size for p in artifact.files.values()) / 2**20
    if size_mb > target.profile.memory_budget_mb:
        raise ToolchainError(
            f"{target.requested}: the model file is {size_mb:.0f} MB, over {target.profile.name}'s "
            f"memory budget of {target.profile.memory_budget_mb} MB; use a lower precision or a "
            "smaller model"
        )


def _check_peak_memory(target: Target, folder: Path, manifest: Manifest,
                       workdir: Path) -> int | None:
    """Peak resident memory (bytes) of a fresh process loading the bundle in `folder` and
    running it on a frame (optimize.bench.memory), refused when over the profile's
    memory_budget_mb: the model file is only part of what the runtime needs. None for a
    bundle carrying its decoder as code, which the measuring process does not run."""
    import cv2

    from edge_sdk.decoders.code import FILE_KEY
    from optimize.bench.memory import run_worker

    if FILE_KEY in manifest.files:
        return None

    frame = workdir / "memory-frame.png"
    if not frame.exists():
        cv2.imwrite(str(frame), np.random.default_rng(0).integers(0, 256, (480, 640, 3),
                                                                   dtype=np.uint8))
    job = {"bundle": str(folder), "label": target.requested, "images": [str(frame)],
           "threads": host_threads(target.profile.threads), "runs": 3, "warmup": 1,
           "timing_images": 1, "progress": False,
           "trust_code": True}  # a decoder the user passed on this command line
    stats, _ = run_worker(job, workdir / "memory-jobs", folder.name)
    peak = int(stats["peak_rss_bytes"])
    budget = target.profile.memory_budget_mb
    if peak > budget * 2**20:
        raise ToolchainError(
            f"{target.requested}: loading and running it took {peak / 2**20:.0f} MB of memory "
            f"at its peak ({stats['backend']} on this host), over {target.profile.name}'s memory "
            f"budget of {budget} MB; use a lower precision, a smaller input or a smaller model")
    return peak


def _metrics_for_manifest(m: Metrics, ref: Metrics) -> dict:
    d = m.to_dict()
    d["size_ratio_vs_fp32"] = m.size_bytes / ref.size_bytes
    d["latency_ratio_vs_fp32"] = m.latency_ms_p50 / ref.latency_ms_p50
    d["measured_on"] = "build host (see report.md)"
    return json.loads(json.dumps(d))


def _check_label_count(card, output_shapes) -> None:
    """A classifier's labels must name every class its output has: fewer mixed names and
    numbers in results ('b', '3', '2', 'a'), more named classes the model cannot output. A
    detector's count is its decoder's num_classes (Ultralytics metadata or --decoder-params):
    three names on YOLO11n's one class had it report every person as the first name."""
    classes = card.decoder_params.get("num_classes")
    if card.labels and isinstance(classes, int) and classes != len(card.labels):
        raise ToolchainError(f"the labels name {len(card.labels)} classes but the model "
                             f"detects {classes} (num_classes); give one name per class, in "
                             "the model's order (--labels FILE, one per line)")
    if card.task != "classify" or not card.labels or len(output_shapes) != 1:
        return
    classes = output_shapes[0][-1] if output_shapes[0] else None
    if isinstance(classes, int) and classes > 0 and classes != len(card.labels):
        raise ToolchainError(f"the labels name {len(card.labels)} classes but the model outputs "
                             f"{classes}; give one name per class, in the model's order "
                             "(--labels FILE, one per line)")


def _takes_score_shift(task: TaskSpec, labels: tuple[str, ...]) -> bool:
    """Whether the bundle's decoder applies a score_shift (the detection decoders do)."""
    from edge_sdk.decoders import build_decoder
    from edge_sdk.errors import EdgeError

    try:
        build_decoder(task.decoder, {**task.params, "score_shift": 0.0}, labels)
    except EdgeError:
        return False
    return True
