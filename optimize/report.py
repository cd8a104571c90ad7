"""Reports: a table on the terminal, report.md/report.json per bundle and for the whole run."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime

from optimize.calibration import ImageSet
from optimize.fidelity import HeldOut
from optimize.intake import SourceModel
from optimize.measure import Metrics
from optimize.tasks import Task
from optimize.tasks.base import independent_images
from optimize.throughput import throughput_text

COLUMNS = ("target", "profile", "format", "size MB", "size x", "p50 ms", "p95 ms", "speed x")


def host_description() -> str:
    cpu = " ".join(x for x in (platform.machine(), _cpu_model()) if x)
    return (f"{cpu}, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def row(name: str, profile: str, fmt: str, m: Metrics, ref: Metrics) -> dict:
    return {
        "target": name,
        "profile": profile,
        "format": fmt,
        "size_bytes": m.size_bytes,
        "size_ratio": m.size_bytes / ref.size_bytes,
        "threads": m.threads,
        "latency_ms_p50": m.latency_ms_p50,
        "latency_ms_p95": m.latency_ms_p95,
        "speedup_vs_fp32": ref.latency_ms_p50 / m.latency_ms_p50,
        "fidelity": m.fidelity,
        "eval_images": m.eval_images,
        "backend": m.backend,
    }


def fidelity_columns(rows: list[dict]) -> tuple[str, ...]:
    """The task's accuracy columns (every row of one export is one task), as measured."""
    for r in rows:
        if r.get("fidelity"):
            return tuple(r["fidelity"]["columns"])
    return ("accuracy",)


def _cells(r: dict, extra: tuple[str, ...]) -> list[str]:
    measured = (r.get("fidelity") or {}).get("columns", {})
    return [r["target"], r["profile"], r["format"], f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['size_ratio']:.3f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p95']:.2f}",
            f"{r['speedup_vs_fp32']:.2f}", *(measured.get(c, "n/a") for c in extra)]


def markdown_table(rows: list[dict]) -> str:
    extra = fidelity_columns(rows)
    columns = COLUMNS + extra
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(r, extra)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    extra = fidelity_columns(rows)
    columns = COLUMNS + extra
    cells = [list(columns)] + [_cells(r, extra) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*cells[0]), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in cells[1:]]
    return "\n".join(out)


def _reference_row(ref: Metrics, source: SourceModel) -> dict:
    return row("fp32 (source)", "-", "onnx", ref, ref)


def notes(source: SourceModel, rows: list[dict], task: Task | None = None,
          held: HeldOut | None = None) -> list[str]:
    threads = sorted({r["threads"] for r in rows})
    notes = [
        f"Measured on the build host ({host_description()}) at batch 1 with "
        f"{', '.join(map(str, threads))} thread(s): the profile's count capped at this host's "
        "cores. Latency is the bare model call; on the device itself, run the bundle there.",
        "size x and speed x compare with the FP32 source model run the same way in the same run "
        "(speed x > 1 is faster).",
    ]
    if task is not None and held is not None:
        r = held.report
        unseen = not (held.report_in_calib or held.search_in_calib)
        kind = "held-out" if unseen else "evaluation"
        scored = (f"{', '.join(fidelity_columns(rows))}: {task.fidelity_metric}, on "
                  f"{len(r)} {kind} images ({independent_images(list(r.names))} independent "
                  "photos; a photo's crops and mirror count once) "
                  + ("not used for calibration" if unseen else
                     f"{_of_them(held.report_in_calib, len(r))} also calibration images (the "
                     "same file contents), so these figures are not from unseen images"))
        if held.search is not None:
            s = held.search
            also = f", {held.search_in_calib} also calibration images" if not unseen else ""
            scored += (f"; the accuracy guard's search used {len(s)} other {kind} images "
                       f"({independent_images(list(s.names))} photos{also}), never these")
        notes.append(scored + ".")
    if any(r["profile"].startswith("jetson") for r in rows):
        notes.append("Jetson bundles are timed here on the CPU with onnxruntime; on the device "
                     "TensorRT builds GPU engines from them (int8 Q/DQ graphs run slowly on a "
                     "CPU), so their latency here says nothing about the Jetson.")
    if source.export_max_abs_diff is not None:
        notes.append(f"PyTorch -> ONNX export checked against torch: max abs diff "
                     f"{source.export_max_abs_diff:.3g} (opset {source.opset}).")
    return notes


def _of_them(n: int, total: int) -> str:
    return "all of them" if n == total else f"{n} of them"


def kept_float_text(guard: dict) -> str:
    """The layers kept in float, as reports name them: node_Conv_992 (_conv_stem.weight)."""
    names = guard.get("kept_float_weights", {})
    return ", ".join(f"{n} ({names[n]})" if n in names else n
                     for n in guard["kept_float"]) or "nothing"


def guard_text(g: dict) -> str:
    """One paragraph: budget, figures before/after the search and on unseen images, verdict."""
    def figure(f: dict | None) -> str:
        return "n/a" if f is None else ", ".join(f"{k} {v}" for k, v in f["columns"].items())

    verdict = "passed" if g["passed"] else "FAILED (written with --force)"
    if g.get("judged_only"):  # fp16: nothing to search
        how = f" ({g['judged_as']})" if g.get("judged_as") else ""
        return (f"Budget {g['budget']:g} ({g['unit']}). On {g['held_out']['images']} held-out "
                f"images{how}: {figure(g['held_out'])}; {verdict}. fp16 is judged, not "
                "searched (no calibration, no layer to keep in float).")
    held = (f"; on held-out images the search never saw: {figure(g['held_out'])} "
            f"({g['held_out']['images']} images)" if g.get("held_out") else "")
    return (f"Budget {g['budget']:g} ({g['unit']}). On the search images: {figure(g['before'])} "
            f"before, {figure(g['after'])} after{held}; {verdict}. Kept float by graph "
            f"analysis (head tail, attention): {len(g.get('float_tail', []))} op(s); layers "
            f"kept in float: {kept_float_text(g)} "
            f"({g['layers_tried']} tried).")


def peak_memory_text(result) -> str:
    """The measured peak memory beside the profile's budget it was checked against."""
    profile = result.target.profile
    return (f"Peak memory, {result.target.requested}: {result.peak_rss_bytes / 2**20:.0f} MB "
            "resident (VmHWM of a fresh process loading the bundle and running it, on this "
            f"host); {profile.name}'s memory budget is {profile.memory_budget_mb} MB.")


def selection_text(sel: dict) -> str:
    """--format auto's record in words: every candidate's p50, fidelity and verdict."""
    parts = []
    for c in sel["candidates"]:
        if c["latency_ms_p50"] is None:
            parts.append(f"{c['format']}: not built ({c['reason']})")
            continue
        fid = c["fidelity"]
        figure = f", {fid['metric']} {fid['value']:.3f}" if fid else ""
        verdict = "chosen" if c["chosen"] else "within budget" if c["passed"] else c["reason"]
        parts.append(f"{c['format']} {c['latency_ms_p50']:.2f} ms p50{figure} ({verdict})")
    load = sel.get("load_average")
    load_text = "" if load is None else f", load average {load:.2f}"
    return (f"measured on this {sel['host_arch']} host at {sel['threads']} thread(s), "
            f"{sel['rounds']} interleaved rounds{load_text}: " + "; ".join(parts) + ".")


def write_bundle_report(result, source: SourceModel) -> None:
    r = row(result.target.requested, result.target.profile.name, result.target.format,
            result.metrics, result.reference)
    rows = [_reference_row(result.reference, source), r]
    data = {"target": result.target.name, "generated": _now(), "host": host_description(),
            "rows": rows, "quantization": result.step, "source": source.to_dict(),
            "throughput": getattr(result, "throughput", None)}
    (result.folder / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# {result.target.requested} ({result.target.name})", "", markdown_table(rows), ""]
    md += [f"- {n}" for n in notes(source, rows)]
    if result.peak_rss_bytes is not None:
        md.append(f"- {peak_memory_text(result)}")
    if result.guard:
        md += ["", "## Accuracy guard", "", guard_text(result.guard)]
    if result.speed_note:
        md += ["", f"**Speed guard:** {result.speed_note}."]
    if result.format_selection:
        md += ["", "## Format (--format auto)", "", selection_text(result.format_selection)]
    if getattr(result, "throughput", None):
        md += ["", "## Throughput (--batch)", "",
               throughput_text(result.target.requested, result.throughput)]
    if result.step:
        md += ["", "## What was done", "", "```json", json.dumps(result.step, indent=2), "```"]
    trt = result.runtime_options.get("tensorrt")
    if trt:
        md += ["", "## Running it with TensorRT", "", "```", trt["trtexec"], "```", "",
               trt["note"] + "."]
    (result.folder / "report.md").write_text("\n".join(md) + "\n")


def combined_rows(results, ref: Metrics, source: SourceModel,
                  unpruned: Metrics | None = None) -> list[dict]:
    rows = [_reference_row(ref, source)]
    if unpruned is not None:
        rows.insert(0, row("fp32 before pruning", "-", "onnx", unpruned, ref))
    for r in results:
        rows.append({**row(r.target.requested, r.target.profile.name, r.target.format,
                           r.metrics, r.reference),
                     "accuracy_guard": r.guard, "speed_note": r.speed_note,
                     "peak_rss_bytes": r.peak_rss_bytes,
                     "format_selection": r.format_selection,
                     "throughput": getattr(r, "throughput", None)})
    return rows


def write_combined(out: Path, results, ref: Metrics, source: SourceModel,
                   calib: ImageSet | None, held: HeldOut | None,
                   unpruned: Metrics | None = None, pruning: dict | None = None,
                   task: Task | None = None,
                   unwritten: dict[str, str] | None = None) -> tuple[Path, Path]:
    """OUT/report.md and report.json; `unwritten`: the targets of this run that were not
    written, each with its reason, so a partial export says so where its results are read."""
    rows = combined_rows(results, ref, source, unpruned)
    data = {
        "generated": _now(),
        "host": host_description(),
        "source": source.to_dict(),
        "calibration_images": 0 if calib is None else len(calib),
        "task": None if task is None else task.name,
        "eval_images": 0 if held is None else len(held.report),
        "guard_search_images": 0 if held is None or held.search is None else len(held.search),
        # evaluation images that are also calibration images (same file contents): not unseen
        "eval_images_in_calibration": 0 if held is None else held.report_in_calib,
        "guard_search_images_in_calibration": 0 if held is None else held.search_in_calib,
        "rows": rows,
        "pruning": pruning,
        "bundles": {r.target.requested: str(r.folder) for r in results},
        "not_written": dict(unwritten or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    js = out / "report.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    md = ["# edge-opt export report", "", f"Source: `{source.spec}`", "", markdown_table(rows), ""]
    md += [f"- **Not written**: {reason}" for reason in data["not_written"].values()]
    md += [f"- {n}" for n in notes(source, rows, task, held)]
    overlap = data["eval_images_in_calibration"]
    md.append(f"- Calibration images: {data['calibration_images']}; "
              f"{'evaluation' if overlap else 'held-out'} images behind the accuracy columns: "
              f"{data['eval_images']}"
              + (f", {_of_them(overlap, data['eval_images'])} also calibration images."
                 if overlap else "."))
    if pruning:
        md.append(f"- Pruning: {json.dumps(pruning)}. 'fp32 (source)' is the pruned model; "
                  "'fp32 before pruning' the original, measured the same way.")
        fid = pruning.get("fidelity_vs_unpruned")
        if fid:
            figures = ", ".join(f"{k} {v}" for k, v in fid["columns"].items())
            md.append(f"- The pruned FP32 model against the unpruned one ('vs fp32' read "
                      f"as vs the unpruned model): {figures}, a loss of {fid['loss']:g} "
                      f"{fid['unit']}.")
    quantized = [r for r in results if r.target.precision in ("int8", "int4", "fp16")]
    if quantized and all(r.guard is None for r in quantized):
        md.append("- Accuracy guard: not run (it needs at least 20 held-out images; pass "
                  "--eval DIR).")
    for r in results:
        if r.peak_rss_bytes is not None:
            md.append(f"- {peak_memory_text(r)}")
        if r.guard and (r.guard["searched"] or not r.guard["passed"]):
            md.append(f"- Accuracy guard, {r.target.requested}: {guard_text(r.guard)}")
        if r.speed_note:
            md.append(f"- Speed guard: {r.speed_note}.")
        shift = (r.step or {}).get("score_calibration") or {}
        if shift.get("score_shift"):
            md.append(f"- Scores, {r.target.requested}: int8's scores moved by "
                      f"{shift['score_shift']:+.2f} on the logit scale to meet FP32's (the "
                      f"median gap of {shift['matched_detections']} matched detections on "
                      f"{shift['calibration_images']} calibration images); the bundle's decoder "
                      "applies it on the device.")
        if r.format_selection:
            md.append(f"- Format, {r.target.requested}: "
                      f"{selection_text(r.format_selection)}")
        if getattr(r, "throughput", None):
            md.append(f"- {throughput_text(r.target.requested, r.throughput)}")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path, js


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
