"""The bench report: one table (terminal, Markdown, HTML) and report.json, from the same rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from optimize.bench.dataset import Dataset

Column = tuple[str, Callable[[dict], str]]

METRIC_NAMES = {"top1": "top-1 accuracy", "map50_95": "mAP@0.5:0.95"}


def metric_name(rows: list[dict]) -> str:
    """The headline accuracy figure's name: a labelled metric, or the task's fidelity one."""
    metric = rows[0]["accuracy_metric"] if rows else "top1"
    if metric == "agree":
        fid = next((r["fidelity"] for r in rows if r.get("fidelity")), None)
        return fid["metric"] if fid else "agreement with FP32"
    return METRIC_NAMES.get(metric, metric)


def _num(key: str, fmt: str, scale: float = 1.0) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        value = r.get(key)
        return "n/a" if value is None else format(value / scale, fmt)

    return cell


def columns(rows: list[dict]) -> list[Column]:
    """Cost columns for every bundle, then the accuracy columns this data can fill."""
    cols: list[Column] = [
        ("bundle", lambda r: r["name"] + (" (ref)" if r["reference"] else "")),
        ("format", lambda r: r["format"]),
        ("precision", lambda r: r["precision"]),
        ("size MB", _num("size_bytes", ".2f", 1e6)),
        ("p50 ms", _num("latency_ms_p50", ".2f")),
        ("p95 ms", _num("latency_ms_p95", ".2f")),
        ("p99 ms", _num("latency_ms_p99", ".2f")),
        ("infer/s", _num("throughput_per_s", ".1f")),
        ("pre+post ms", _num("prepost_ms_p50", ".2f")),
        ("peak MB", _num("peak_rss_bytes", ".0f", 1e6)),
        ("startup ms", _num("startup_ms", ".0f")),
    ]
    labelled = [("top-1", "top1"), ("top-5", "top5"), ("mAP50", "map50"),
                ("mAP50-95", "map50_95")]
    cols += [(title, _num(key, ".3f")) for title, key in labelled
             if any(r.get(key) is not None for r in rows)]
    fidelity: list[str] = []  # the task's own columns, as export's report shows them
    for r in rows:
        for title in (r.get("fidelity") or {}).get("columns", {}):
            if title not in fidelity:
                fidelity.append(title)
    cols += [(title, _fidelity_cell(title)) for title in fidelity]
    cols.append(("Pareto", lambda r: "yes" if r.get("pareto") else ""))
    return cols


def _fidelity_cell(title: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        return (r.get("fidelity") or {}).get("columns", {}).get(title, "n/a")

    return cell


def cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = columns(rows)
    return [c[0] for c in cols], [[fn(r) for _, fn in cols] for r in rows]


def markdown_table(rows: list[dict]) -> str:
    head, body = cells(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])


def text_table(rows: list[dict]) -> str:
    head, body = cells(rows)
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*c) for c in body])


def notes(rows: list[dict], dataset: Dataset, ref_note: str, images: int,
          cache: str | None = None) -> list[str]:
    """How to read the table: what was measured where, and what each number means."""
    from optimize.report import host_description

    threads = sorted({r["threads"] for r in rows})
    runs = rows[0]["runs"] if rows else 0
    fid = next((r["fidelity"] for r in rows if r.get("fidelity")), None)
    if dataset.labelled:
        accuracy = "Accuracy is against the labels."
    else:
        accuracy = "No labels: accuracy is fidelity to the FP32 model."
    if dataset.kind in ("yolo", "coco"):
        accuracy += (" mAP is COCO's (pycocotools): at IoU 0.5, and averaged over IoU "
                     "0.50:0.05:0.95, up to 100 boxes per image.")
    if fid:
        accuracy += (f" Against FP32 each bundle is judged by its task's yardstick, as export's "
                     f"accuracy guard judges it: {fid['metric']} ({', '.join(fid['columns'])}), "
                     f"on {fid['images']} image(s) from {fid['independent_images']} "
                     "independent photo(s).")
    out = [
        f"Data: {dataset.root}: {dataset.describe()}; {images} image(s) read by every bundle. "
        + accuracy,
        ref_note + ".",
        f"Measured on the build host ({host_description()}) with {', '.join(map(str, threads))} "
        "thread(s): each profile's count capped at this host's cores. Each bundle runs in a "
        "fresh process of its own, one after the other.",
        f"Latency: the bare model call (Model.infer) at batch 1, {runs} timed calls after "
        "warm-up, cycling through real preprocessed images; infer/s = those calls per second "
        "back to back. pre+post ms: median per image of Model.preprocess (resize, normalise) "
        "plus Model.decode (top-k or boxes + NMS), timed apart from the model; reading the "
        "image file is not included.",
        "startup ms: from edge_sdk.load to the first image's result (load, compile, first "
        "predict), in a fresh process" + (f" with the compile cache {cache}" if cache else
                                          " without a compile cache") + ".",
        "peak MB: the highest resident memory (VmHWM) of that process: Python, the runtime, the "
        "model and one image at a time; report.json also has the resident size before the "
        "bundle was loaded (rss_baseline_bytes).",
        f"Pareto: no other bundle is both at least as fast (p50) and at least as accurate "
        f"({metric_name(rows)}); the others have a better choice.",
    ]
    if any(r["profile"].startswith("jetson") for r in rows):
        out.append("Jetson bundles are timed here on the CPU with onnxruntime; on the device "
                   "TensorRT runs them on the GPU, so their latency here says nothing about the "
                   "Jetson (their accuracy does carry over).")
    over = [f"{r['name']} ({g['metric']}, budget {g['budget']:g} {g['unit']})"
            for r in rows if (g := r.get("accuracy_guard")) and not g.get("passed", True)]
    if over:
        out.append("Over export's accuracy budget on held-out images, written anyway to be "
                   f"compared here: {', '.join(over)}.")
    lost = [r["name"] for r in rows if not r["reference"] and r.get("accuracy") is None]
    if lost:
        out.append(f"No accuracy for {', '.join(lost)}: built from another model than the "
                   "reference, or nothing to compare with.")
    return out


def to_json(result) -> dict:
    ds = result.dataset
    return {
        "generated": _now(),
        "data": {"root": str(ds.root), "kind": ds.kind, "images": len(ds.samples),
                 "description": ds.describe(), "class_mapping": ds.mapping,
                 "classes": ds.class_map},
        "reference": result.reference,
        "reference_note": result.reference_note,
        "accuracy_metric": result.rows[0]["accuracy_metric"] if result.rows else None,
        "pareto_front": [r["name"] for r in result.rows if r.get("pareto")],
        "rows": result.rows,
        "notes": result.notes,
    }


# How each report file starts: bench replaces only files that start so (optimize.bundle).
TITLES = {"report.md": "# edge-opt bench report", "report.json": '{\n  "generated"',
          "report.html": "<!DOCTYPE html>"}


def write_all(out: Path, result):
    """report.md, report.json and the self-contained report.html in `out`."""
    from optimize.bench import html

    out.mkdir(parents=True, exist_ok=True)
    data = to_json(result)
    js = out / "report.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    md = ["# edge-opt bench report", "", markdown_table(result.rows), ""]
    md += [f"- {n}" for n in result.notes]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_path = out / "report.html"
    html_path.write_text(html.render(result, data["generated"]), encoding="utf-8")
    return replace(result, report_md=md_path, report_json=js, report_html=html_path)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
