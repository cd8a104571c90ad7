"""Reports: a table on the terminal, report.md/report.json per bundle and for the whole run."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime

from optimize.calibration import ImageSet
from optimize.intake import SourceModel
from optimize.measure import Metrics

COLUMNS = ("target", "profile", "format", "size MB", "size x", "p50 ms", "p95 ms", "speed x",
           "top-1 agree", "max |diff|")


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
        "top1_agreement": m.top1_agreement,
        "max_abs_diff": m.max_abs_diff,
        "mean_abs_diff": m.mean_abs_diff,
        "eval_images": m.eval_images,
        "backend": m.backend,
    }


def _cells(r: dict) -> list[str]:
    agree = "n/a" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
    diff = "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.4g}"
    return [r["target"], r["profile"], r["format"], f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['size_ratio']:.3f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p95']:.2f}",
            f"{r['speedup_vs_fp32']:.2f}", agree, diff]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    cells = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*cells[0]), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in cells[1:]]
    return "\n".join(out)


def _reference_row(ref: Metrics, source: SourceModel) -> dict:
    return row("fp32 (source)", "-", "onnx", ref, ref)


def notes(source: SourceModel, rows: list[dict]) -> list[str]:
    threads = sorted({r["threads"] for r in rows})
    notes = [
        f"Measured on the build host ({host_description()}) at batch 1 with "
        f"{', '.join(map(str, threads))} thread(s): the profile's count capped at this host's "
        "cores. Latency is the bare model call; on the device itself, run the bundle there.",
        "size x and speed x compare with the FP32 source model run the same way in the same run "
        "(speed x > 1 is faster).",
        "top-1 agree: share of held-out images (not used for calibration) whose top-1 class "
        "matches the FP32 model's; max |diff|: largest difference of any output value.",
    ]
    if any(r["profile"].startswith("jetson") for r in rows):
        notes.append("Jetson bundles are timed here on the CPU with onnxruntime; on the device "
                     "TensorRT builds GPU engines from them (int8 Q/DQ graphs run slowly on a "
                     "CPU), so their latency here says nothing about the Jetson.")
    if source.export_max_abs_diff is not None:
        notes.append(f"PyTorch -> ONNX export checked against torch: max abs diff "
                     f"{source.export_max_abs_diff:.3g} (opset {source.opset}).")
    return notes


def kept_float_text(guard: dict) -> str:
    """The layers kept in float, as reports name them: node_Conv_992 (_conv_stem.weight)."""
    names = guard.get("kept_float_weights", {})
    return ", ".join(f"{n} ({names[n]})" if n in names else n
                     for n in guard["kept_float"]) or "nothing"


def write_bundle_report(result, source: SourceModel) -> None:
    r = row(result.target.requested, result.target.profile.name, result.target.format,
            result.metrics, result.reference)
    rows = [_reference_row(result.reference, source), r]
    data = {"target": result.target.name, "generated": _now(), "host": host_description(),
            "rows": rows, "quantization": result.step, "source": source.to_dict()}
    (result.folder / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# {result.target.requested} ({result.target.name})", "", markdown_table(rows), ""]
    md += [f"- {n}" for n in notes(source, rows)]
    if result.guard:
        g = result.guard
        md += ["", "## Accuracy guard", "",
               f"Budget {g['budget_points']:g} points ({g['metric']}): "
               f"{g['drop_before_points']:.2f} points before, {g['drop_after_points']:.2f} after; "
               f"{'passed' if g['passed'] else 'FAILED (written with --force)'}. "
               f"Kept in float: {kept_float_text(g)} "
               f"({g['layers_tried']} layer(s) tried)."]
    if result.speed_note:
        md += ["", f"**Speed guard:** {result.speed_note}."]
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
                     "accuracy_guard": r.guard, "speed_note": r.speed_note})
    return rows


def write_combined(out: Path, results, ref: Metrics, source: SourceModel,
                   calib: ImageSet | None, evaluation: ImageSet | None,
                   unpruned: Metrics | None = None, pruning: dict | None = None
                   ) -> tuple[Path, Path]:
    rows = combined_rows(results, ref, source, unpruned)
    data = {
        "generated": _now(),
        "host": host_description(),
        "source": source.to_dict(),
        "calibration_images": 0 if calib is None else len(calib),
        "eval_images": 0 if evaluation is None else len(evaluation),
        "rows": rows,
        "pruning": pruning,
        "bundles": {r.target.requested: str(r.folder) for r in results},
    }
    out.mkdir(parents=True, exist_ok=True)
    js = out / "report.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    md = ["# edge-opt export report", "", f"Source: `{source.spec}`", "", markdown_table(rows), ""]
    md += [f"- {n}" for n in notes(source, rows)]
    md.append(f"- Calibration images: {data['calibration_images']}; held-out evaluation images: "
              f"{data['eval_images']}.")
    if pruning:
        md.append(f"- Pruning: {json.dumps(pruning)}. 'fp32 (source)' is the pruned model; "
                  "'fp32 before pruning' the original, measured the same way.")
    quantized = [r for r in results if r.target.precision in ("int8", "int4")]
    if quantized and all(r.guard is None for r in quantized):
        md.append("- Accuracy guard: not run (it needs at least 20 held-out images; pass "
                  "--eval DIR).")
    for r in results:
        if r.guard and (r.guard["searched"] or not r.guard["passed"]):
            md.append(f"- Accuracy guard, {r.target.requested}: {r.guard['drop_before_points']:.2f}"
                      f" -> {r.guard['drop_after_points']:.2f} points (budget "
                      f"{r.guard['budget_points']:g}); kept in float: "
                      f"{kept_float_text(r.guard)}.")
        if r.speed_note:
            md.append(f"- Speed guard: {r.speed_note}.")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path, js


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
