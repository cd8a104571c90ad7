"""`edge-opt bench`: find or build the bundles, measure each in its own process, compare.

    inputs (bundles | model + targets) + --data -> OUT/bundles/* (when built) ->
    one worker per bundle -> accuracy vs labels or vs FP32 -> report.md / .json / .html

Against FP32 every bundle is scored by its task's own fidelity function (optimize/tasks: top-1
agreement, detection mAP and F1, SQNR...), the same yardstick export's guard uses; against
labels by what the data's labels can score (class folders: top-1/top-5; boxes: mAP).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_sdk.errors import ManifestError
from edge_sdk.manifest import MANIFEST_NAME, Manifest
from optimize.bench import accuracy
from optimize.bench.dataset import Dataset, RawDataset, resolve, scan
from optimize.bench.errors import BenchError
from optimize.bench.memory import run_worker
from optimize.bench.pareto import pareto_front
from optimize.fidelity import in_reference_layout
from optimize.measure import host_threads
from optimize.progress import Progress
from optimize.tasks import Scoring, get_task

if TYPE_CHECKING:
    from optimize.engine import ExportRequest


@dataclass
class BenchRequest:
    inputs: list[str]  # bundle folders (or folders of bundles), or one model with `build`
    data: Path | None
    out: Path
    build: ExportRequest | None = None  # how to build the bundles, when inputs is a model
    data_format: str = "auto"
    cache_dir: Path | None = None  # a compile cache, as a device configures one
    runs: int = 50
    warmup: int = 5
    timing_images: int = 8  # latency cycles through this many real preprocessed images
    max_images: int | None = None
    progress: bool = True
    trust_code: bool = False  # run Python decoders that bundles carry (--trust-bundle-code)


@dataclass(frozen=True)
class BenchResult:
    rows: list[dict]  # one per bundle, in input order (see report.py for the keys)
    dataset: Dataset
    reference: str | None  # name of the FP32 bundle accuracy is compared with
    reference_note: str
    notes: list[str] = field(default_factory=list)
    report_md: Path | None = None
    report_json: Path | None = None
    report_html: Path | None = None


@dataclass(frozen=True)
class _Bundle:
    name: str
    folder: Path
    manifest: Manifest


def bench(req: BenchRequest) -> BenchResult:
    """Everything the user typed is checked before the first model is built or loaded."""
    from optimize.bench import report

    progress = Progress(req.progress)
    raw = scan(req.data, req.data_format, req.max_images)
    built_reference = None
    if req.build is not None:
        folders, built_reference = _build(req, raw, progress)
    else:
        folders = _bundle_folders(req.inputs)
    bundles = _read_bundles(folders)
    task, labels = _common_task_and_labels(bundles)
    dataset = resolve(raw, labels, task)
    ref, ref_note = _reference(bundles, dataset, built_reference, req.build is not None)
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    try:
        measured = _measure_all(bundles, dataset, ref, req, workdir)
        readable = np.logical_and.reduce([arrays["ok"] for _, arrays in measured.values()])
        if not readable.any():
            raise BenchError(f"none of the {len(readable)} images in {dataset.root} could be "
                             "read")
        rows = []
        for b in bundles:
            row = _row(b, *measured[b.name], dataset, readable, b is ref)
            if ref is not None and _same_source(b, ref):
                row.update(_fidelity(b, ref, workdir, dataset, readable))
            row["accuracy_metric"] = LABELLED[dataset.kind].metric or "agree"
            row["accuracy"] = row.get(row["accuracy_metric"])
            rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    flags = pareto_front([(r["latency_ms_p50"], r["accuracy"]) if r["accuracy"] is not None
                          else None for r in rows])
    for r, f in zip(rows, flags):
        r["pareto"] = f
    notes = report.notes(rows, dataset, ref_note, int(readable.sum()),
                         None if req.cache_dir is None else str(req.cache_dir))
    unread = [s.path.name for s, ok in zip(dataset.samples, readable) if not ok]
    if unread:  # as export's report names the files it skipped
        shown = ", ".join(unread[:3]) + (", ..." if len(unread) > 3 else "")
        notes.insert(1, f"Skipped {len(unread)} file(s) of --data that are not whole, readable "
                        f"images, left out of every figure ({shown}).")
    result = BenchResult(rows, dataset, None if ref is None else ref.name, ref_note, notes)
    return report.write_all(req.out, result)


def _measure_all(bundles: list[_Bundle], dataset: Dataset, ref: _Bundle | None,
                 req: BenchRequest, workdir: Path) -> dict[str, tuple[dict, dict]]:
    """One worker process per bundle, one after the other, the reference first."""
    order = sorted(bundles, key=lambda b: b is not ref)
    images = [str(s.path) for s in dataset.samples]
    measured = {}
    for b in order:
        comparable = ref is not None and _same_source(b, ref)
        job = {"bundle": str(b.folder), "label": b.name, "images": images,
               "threads": host_threads(b.manifest.runtime.threads), "runs": req.runs,
               "warmup": req.warmup, "timing_images": req.timing_images,
               "progress": req.progress, "trust_code": req.trust_code,
               "cache_dir": None if req.cache_dir is None else str(req.cache_dir),
               "keep": LABELLED[dataset.kind].keep,
               "outputs": str(_outputs_dir(workdir, b)) if comparable else None}
        measured[b.name] = run_worker(job, workdir, _safe(b.name))
    return measured


def _outputs_dir(workdir: Path, b: _Bundle) -> Path:
    return workdir / f"{_safe(b.name)}.outputs"


def _build(req: BenchRequest, raw: RawDataset, progress: Progress
           ) -> tuple[list[Path], str | None]:
    """Export the model to OUT/bundles; add its FP32 when unlabelled data needs a reference."""
    from device_profiles import resolve_target
    from device_profiles.targets import FORMATS
    from optimize.engine import export

    build = req.build
    fmt = build.fmt if build.fmt in FORMATS else None  # auto/default: resolved by export
    targets = [resolve_target(t, fmt) for t in build.targets]
    added = None
    if not raw.labelled and not any(t.precision == "fp32" for t in targets):
        added = f"{targets[0].profile.name}-fp32"
        build = replace(build, targets=[*build.targets, added])
    if build.card.labels and raw.kind == "classes":
        resolve(raw, tuple(build.card.labels), "classify")  # bad folder names: fail before export
    build = replace(build, out=req.out / "bundles", progress=progress.enabled)
    result = export(build)
    return [r.folder for r in result.results], added


def _bundle_folders(inputs: list[str]) -> list[Path]:
    """Bundle folders as given; a folder of bundles (an export's --out) stands for all of them."""
    if not inputs:
        raise BenchError("nothing to benchmark: pass bundle folders, or a model with --target")
    folders: list[Path] = []
    for text in inputs:
        path = Path(text)
        if (path / MANIFEST_NAME).is_file():
            folders.append(path)
            continue
        inner = sorted(p.parent for p in path.glob(f"*/{MANIFEST_NAME}")) if path.is_dir() else []
        if inner:
            folders += inner
        elif path.is_dir():
            raise BenchError(f"{path} is not a bundle (no {MANIFEST_NAME} in it or in its "
                             "subfolders); pass folders written by `edge-opt export`")
        elif path.exists() or ":" in text or path.suffix.lower() == ".onnx":
            raise BenchError(f"{path} is a model, not a bundle: pass --target (e.g. --target "
                             "x86-int8) to build bundles from it")
        else:
            raise BenchError(f"{path} does not exist; pass bundle folders written by "
                             "`edge-opt export`")
    return folders


def _read_bundles(folders: list[Path]) -> list[_Bundle]:
    bundles, seen = [], set()
    for folder in folders:
        try:
            manifest = Manifest.read(folder)
        except ManifestError as exc:
            raise BenchError(f"{folder}: {exc}") from None
        name = folder.name
        if name in seen:  # out1/x86-int8 and out2/x86-int8
            name = f"{folder.parent.name}/{folder.name}"
        if name in seen:
            raise BenchError(f"{folder} is given twice")
        seen.add(name)
        bundles.append(_Bundle(name, folder, manifest))
    return bundles


def _common_task_and_labels(bundles: list[_Bundle]) -> tuple[str, tuple[str, ...]]:
    tasks = {b.manifest.task.type for b in bundles}
    if len(tasks) > 1:
        raise BenchError("the bundles do different tasks (" + ", ".join(
            f"{b.name}: {b.manifest.task.type}" for b in bundles) + "); bench one model's bundles")
    labels = {b.manifest.labels for b in bundles if b.manifest.labels}
    if len(labels) > 1:
        raise BenchError("the bundles have different labels.txt files; bench one model's "
                         "bundles")
    return tasks.pop(), (labels.pop() if labels else ())


def _reference(bundles: list[_Bundle], dataset: Dataset, built: str | None, from_model: bool
               ) -> tuple[_Bundle | None, str]:
    """The FP32 bundle accuracy is compared with, and a sentence saying where it came from."""
    fp32 = [b for b in bundles if b.manifest.precision == "fp32"]
    if not fp32:
        if not dataset.labelled:
            raise BenchError(
                f"--data {dataset.root} has no labels and no fp32 bundle is among the inputs to "
                "compare with: add one (e.g. out/x86-fp32), label the data, or pass the model "
                "with --target to build it")
        return None, "No fp32 bundle among the inputs, so there is no agreement column"
    ref = fp32[0]
    if built is not None and ref.name == Path(built).name:
        how = f"built from the model for the first target's profile ({built})"
    elif from_model:
        how = "the fp32 one among the targets"
    else:
        how = "the fp32 bundle among the inputs"
    return ref, f"FP32 reference: {ref.name} ({ref.manifest.format}), {how}"


def _row(b: _Bundle, stats: dict, arrays: dict, dataset: Dataset, readable: np.ndarray,
         is_ref: bool) -> dict:
    """One table row: what the bundle costs (size, time, memory) and what it gets right."""
    latency = np.asarray(stats["latency_ms"])
    pre, post = np.asarray(stats["pre_ms"]), np.asarray(stats["post_ms"])
    ok = arrays["ok"]
    keep = readable[ok]  # this bundle's per-image arrays cover its readable images only
    m = b.manifest
    size = sum((b.folder / f.path).stat().st_size for k, f in m.files.items() if k != "labels")
    row = {
        "name": b.name, "target": m.target, "profile": m.profile, "format": m.format,
        "precision": m.precision, "backend": stats["backend"], "threads": stats["threads"],
        "folder": str(b.folder), "size_bytes": size,
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p95": float(np.percentile(latency, 95)),
        "latency_ms_p99": float(np.percentile(latency, 99)),
        "latency_ms_mean": float(latency.mean()), "runs": len(latency),
        "throughput_per_s": float(1000 * len(latency) / latency.sum()),
        "pre_ms_p50": float(np.median(pre[keep])), "post_ms_p50": float(np.median(post[keep])),
        "prepost_ms_p50": float(np.median(pre[keep] + post[keep])),
        "load_ms": stats["load_ms"], "startup_ms": stats["startup_ms"],
        "peak_rss_bytes": stats["peak_rss_bytes"],
        "rss_baseline_bytes": stats["rss_baseline_bytes"],
        "rss_after_load_bytes": stats["rss_after_load_bytes"],
        "images": int(readable.sum()), "reference": is_ref,
        "accuracy_guard": (m.metrics or {}).get("accuracy_guard"),  # export's verdict, if any
    }
    row.update(LABELLED[dataset.kind].score(arrays, ok, readable, dataset))
    return row


def _fidelity(b: _Bundle, ref: _Bundle, workdir: Path, dataset: Dataset,
              readable: np.ndarray) -> dict:
    """The bundle against the FP32 reference, by its task's fidelity function (as export's
    guard judges it), on the images every bundle could read."""
    m = b.manifest
    index = np.flatnonzero(readable)
    reference = _load_outputs(_outputs_dir(workdir, ref), index)
    got = [[in_reference_layout(r, g) for r, g in zip(ref_out, out)]
           for ref_out, out in zip(reference, _load_outputs(_outputs_dir(workdir, b), index))]
    scoring = Scoring(task=m.task, labels=m.labels,
                      image_names=tuple(dataset.samples[i].path.name for i in index),
                      output_names=tuple(o.name for o in m.outputs))
    fid = get_task(m.task.type).fidelity(reference, got, scoring)
    return {"agree": fid.value, "fidelity": fid.to_dict()}


def _load_outputs(folder: Path, index: np.ndarray) -> list[list[np.ndarray]]:
    out = []
    for i in index:
        with np.load(folder / f"{i}.npz") as data:
            out.append([data[f"arr_{k}"] for k in range(len(data.files))])
    return out


def _same_source(a: _Bundle, b: _Bundle) -> bool:
    """Whether two bundles come from one model; unknown (no hash, or hashes of different
    things) counts as the same. A bundle written before `sha256_covers` hashed only the .onnx
    file, also when weights were in side files: its hash cannot be compared with one over
    several files."""
    sa, sb = a.manifest.source.get("sha256"), b.manifest.source.get("sha256")
    if sa is None or sb is None:
        return True
    ca, cb = (m.manifest.source.get("sha256_covers") for m in (a, b))
    if (ca is None) != (cb is None) and len(ca or cb or ()) > 1:
        return True
    return sa == sb


def _top_k(arrays: dict, ok: np.ndarray, readable: np.ndarray, dataset: Dataset) -> dict:
    top = arrays["ranked"][readable[ok]]
    targets = np.array([s.class_id for s in dataset.samples])[readable]
    return {"top1": accuracy.topk_accuracy(top, targets, 1),
            "top5": accuracy.topk_accuracy(top, targets, 5)}


def _detections(arrays: dict, readable: np.ndarray) -> list[accuracy.Boxes]:
    idx = arrays["image_index"]
    return [accuracy.Boxes(arrays["boxes"][idx == i], arrays["classes"][idx == i],
                           arrays["scores"][idx == i])
            for i in np.flatnonzero(readable)]


def _box_map(arrays: dict, ok: np.ndarray, readable: np.ndarray, dataset: Dataset) -> dict:
    truths = []
    for i in np.flatnonzero(readable):
        s = dataset.samples[i]
        h, w = arrays["sizes"][i]
        truths.append(accuracy.Boxes(s.pixel_boxes(int(w), int(h), dataset.normalized),
                                     s.box_classes, crowd=s.crowd))
    map50, map5095 = accuracy.detection_map(_detections(arrays, readable), truths)
    return {"map50": map50, "map50_95": map5095}


@dataclass(frozen=True)
class Labelled:
    """What a data layout's labels score: what the worker keeps per image, the scorer, and
    the headline figure's key (None: no labels, the headline is fidelity to FP32)."""

    keep: str | None
    score: Callable[[dict, np.ndarray, np.ndarray, Dataset], dict]
    metric: str | None


LABELLED: dict[str, Labelled] = {
    "classes": Labelled("ranked", _top_k, "top1"),
    "yolo": Labelled("boxes", _box_map, "map50_95"),
    "coco": Labelled("boxes", _box_map, "map50_95"),
    "images": Labelled(None, lambda *_: {}, None),
}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
