"""Structured pruning on the Fashion-MNIST CNN: before/after params, MACs, size, latency, top-1.

Trains the example CNN (or reuses its checkpoint), prunes 30 % of every layer's channels with
optimize.prune, fine-tunes the pruned model briefly with the example's hook, exports both through
optimize.intake.export_torch and quantizes both to int8 with the x86 ONNX scheme
(optimize.steps, calibrated on 500 training images). Then, in one process at 2 threads, it
measures the four ONNX models with onnxruntime: top-1 on the 10k labelled test images (read
back from PNG through the device's preprocessing) and batch-1 latency, interleaving the models
round by round so the machine's noise hits all of them alike. Writes
benchmarks/results/pruning.json and .md.

    .venv/bin/python benchmarks/bench_pruning.py [--ratio 0.3] [--rounds 15] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_profiles import resolve_target  # noqa: E402
from edge_sdk.manifest import InputSpec  # noqa: E402
from examples.fashion_mnist import data  # noqa: E402
from examples.fashion_mnist import model as fm  # noqa: E402
from examples.fashion_mnist import train as fm_train  # noqa: E402
from optimize.calibration import ImageSet, load_images  # noqa: E402
from optimize.report import host_description  # noqa: E402

THREADS = 2
SPEC = "examples/fashion_mnist/model.py:build"
INPUT = InputSpec(name="input", shape=(1, 1, 28, 28), color="GRAY", mean=(0.0,), std=(255.0,))
GOALS = {"macs_cut_min": 0.35, "latency_cut_min": 0.25, "int8_top1_drop_max_points": 0.5}
VARIANTS = ("fp32", "int8", "pruned-fp32", "pruned-int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3, help="channels removed per layer")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50, help="timed calls per model per round")
    parser.add_argument("--finetune-steps", type=int, default=fm_train.FINETUNE_STEPS)
    parser.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    parser.add_argument("--data", type=Path, default=ROOT / "edge-out" / "fashion_mnist" / "data",
                        help="where the test/ and calib/ image trees are (written if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    fm_train.FINETUNE_STEPS = args.finetune_steps
    checkpoint = fm.checkpoint_path()
    if args.retrain or not checkpoint.is_file():
        print(f"training the CNN -> {checkpoint}", flush=True)
        fm_train.main(["--out", str(checkpoint)])
    base, info = fm.load_checkpoint(checkpoint)
    trees = _image_trees(args.data)
    test_x, test_y = data.load("test")

    from optimize.prune import prune

    example = torch.rand(1, 1, 28, 28)
    unfinetuned = prune(base, example, ratio=args.ratio)
    top1_unfinetuned = fm_train.evaluate(unfinetuned.module, test_x, test_y)
    start = time.perf_counter()
    pruned = prune(base, example, ratio=args.ratio, finetune=fm_train.finetune)
    finetune_s = time.perf_counter() - start
    pruned_ckpt = fm.save_checkpoint(pruned.module, checkpoint.with_name("cnn_pruned.pt"),
                                     test_top1=fm_train.evaluate(pruned.module, test_x, test_y),
                                     prune=pruned.to_dict())

    with tempfile.TemporaryDirectory() as tmp:
        paths = _export_all(base, pruned.module, Path(tmp), trees["calib"])
        sizes = {v: p.stat().st_size for v, p in paths.items()}
        sessions = {v: _session(p) for v, p in paths.items()}
        images = load_images(trees["test"], INPUT, "evaluation")
        truth = np.array([test_y[int(Path(n).stem)] for n in images.names])
        top1 = {v: _top1(s, images, truth) for v, s in sessions.items()}
        times = _interleaved_latency(sessions, list(images.tensors[:200]), args.rounds, args.runs)

    macs = {"fp32": pruned.macs_before, "pruned-fp32": pruned.macs_after}
    params = {"fp32": pruned.params_before, "pruned-fp32": pruned.params_after}
    for v in ("int8", "pruned-int8"):
        macs[v], params[v] = macs[v.replace("int8", "fp32")], params[v.replace("int8", "fp32")]
    p50 = {v: float(np.percentile(t, 50)) for v, t in times.items()}
    rows = [{
        "model": v,
        "widths": list(fm.widths_of(pruned.module if v.startswith("pruned") else base)),
        "params": params[v],
        "macs": macs[v],
        "onnx_bytes": sizes[v],
        "latency_ms_p50": p50[v],
        "latency_ms_p95": float(np.percentile(times[v], 95)),
        "latency_x_fp32": p50[v] / p50["fp32"],
        "top1": top1[v],
    } for v in VARIANTS]
    checks = {
        "macs_cut": 1 - pruned.macs_ratio,
        "latency_cut": 1 - p50["pruned-fp32"] / p50["fp32"],
        "params_cut": 1 - pruned.params_ratio,
        "channels_removed": pruned.channels_removed,
        "prune_top1_cost_points": 100 * (top1["fp32"] - top1["pruned-fp32"]),
        "prune_top1_cost_points_without_finetune": 100 * (top1["fp32"] - top1_unfinetuned),
        "int8_top1_drop_points": 100 * (top1["fp32"] - top1["int8"]),
        "pruned_int8_top1_drop_points": 100 * (top1["pruned-fp32"] - top1["pruned-int8"]),
    }
    checks["macs_cut_ok"] = checks["macs_cut"] >= GOALS["macs_cut_min"]
    checks["latency_cut_ok"] = checks["latency_cut"] >= GOALS["latency_cut_min"]
    checks["int8_top1_drop_ok"] = (checks["int8_top1_drop_points"]
                                   <= GOALS["int8_top1_drop_max_points"])
    result = {
        "benchmark": "pruning",
        "model": "Fashion-MNIST CNN (examples/fashion_mnist), trained here",
        "checkpoint": {"path": str(checkpoint.relative_to(ROOT)
                                   if checkpoint.is_relative_to(ROOT) else checkpoint),
                       **{k: v for k, v in info.items() if k != "prune"}},
        "pruned_checkpoint": str(pruned_ckpt.relative_to(ROOT)
                                 if pruned_ckpt.is_relative_to(ROOT) else pruned_ckpt),
        "prune": pruned.to_dict(),
        "finetune_seconds": round(finetune_s, 1),
        "int8_scheme": resolve_target("x86-int8", "onnx").scheme["name"],
        "host": host_description(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "threads": THREADS,
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "test_images": len(truth),
        "goals": GOALS,
        "checks": checks,
        "rows": rows,
        "command": "python benchmarks/bench_pruning.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (args.out / "pruning.md").write_text(md)
    print(md)
    return 0


def _image_trees(folder: Path) -> dict[str, Path]:
    """The 10k test PNGs and 500 calibration PNGs, written once and reused."""
    trees = {"test": folder / "test", "calib": folder / "calib"}
    if sum(1 for _ in trees["test"].rglob("*.png")) != 10000 or not trees["calib"].is_dir():
        print(f"writing the Fashion-MNIST image trees to {folder}", flush=True)
        trees = data.export_trees(folder)
    return trees


def _export_all(base, pruned, tmp: Path, calib_dir: Path) -> dict[str, Path]:
    """FP32 ONNX of both models (the edge-opt intake path) and their int8 versions."""
    from optimize.intake import export_torch
    from optimize.steps import StepContext, run_step

    scheme = resolve_target("x86-int8", "onnx").scheme
    calib = load_images(calib_dir, INPUT, "calibration")
    paths = {}
    for prefix, module in (("", base), ("pruned-", pruned)):
        workdir = tmp / f"{prefix}src"
        workdir.mkdir()
        source = export_torch(module, SPEC, workdir, INPUT.shape)
        paths[f"{prefix}fp32"] = source.onnx_path
        int8 = tmp / f"{prefix}int8.onnx"
        run_step("int8", source.onnx_path, int8,
                 StepContext(input_name=source.input_name, scheme=scheme, calibration=calib))
        paths[f"{prefix}int8"] = int8
    return paths


def _session(path: Path):
    """The same session settings as edge_sdk's onnxruntime backend."""
    import onnxruntime as ort

    from edge_sdk.backends.onnxruntime import session_options

    return ort.InferenceSession(str(path), session_options(THREADS),
                                providers=["CPUExecutionProvider"])


def _top1(session, images: ImageSet, truth: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    pred = np.array([int(np.argmax(session.run(None, {name: t})[0])) for t in images.tensors])
    return float(np.mean(pred == truth))


def _interleaved_latency(sessions: dict, tensors: list[np.ndarray], rounds: int,
                         runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v: [] for v in sessions}
    for _ in range(rounds):
        for v, s in sessions.items():
            name = s.get_inputs()[0].name
            for i in range(5):
                s.run(None, {name: tensors[i % len(tensors)]})
            for i in range(runs):
                start = time.perf_counter()
                s.run(None, {name: tensors[i % len(tensors)]})
                times[v].append((time.perf_counter() - start) * 1000)
    return times


def _markdown(r: dict) -> str:
    c, p = r["checks"], r["prune"]
    lines = [
        f"# Structured pruning, Fashion-MNIST CNN, {r['threads']} threads", "",
        f"Host: {r['host']}. Pruned {p['ratio']:.0%} of each layer's channels (rounded to "
        f"multiples of {p['round_to']}: {p['channels_removed']:.1%} of channels removed), "
        f"fine-tuned {p['finetune']} ({r['finetune_seconds']:.0f} s). int8: {r['int8_scheme']}, "
        f"500 calibration images. Top-1 on the {r['test_images']} labelled test images; latency "
        f"at batch 1, {r['rounds']} interleaved rounds x {r['runs_per_round']} calls (host load "
        f"average {r['load_average_1min'][0]:.1f} at start, {r['load_average_1min'][1]:.1f} at "
        "end: p95 shows other work on the machine, p50 is the figure to compare).", "",
        "| model | conv widths | params | MMACs | ONNX KB | p50 ms | p95 ms | latency x fp32 "
        "| top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['model']} | {'/'.join(map(str, row['widths']))} | {row['params']:,} | "
            f"{row['macs'] / 1e6:.1f} | {row['onnx_bytes'] / 1024:.0f} | "
            f"{row['latency_ms_p50']:.3f} | {row['latency_ms_p95']:.3f} | "
            f"{row['latency_x_fp32']:.2f} | {row['top1']:.4f} |")
    g = r["goals"]
    lines += [
        "",
        f"- MACs cut {c['macs_cut']:.1%} (goal >= {g['macs_cut_min']:.0%}: "
        f"{'met' if c['macs_cut_ok'] else 'NOT met'}), params cut {c['params_cut']:.1%}.",
        f"- fp32 latency cut {c['latency_cut']:.1%} (goal >= {g['latency_cut_min']:.0%}: "
        f"{'met' if c['latency_cut_ok'] else 'NOT met'}).",
        f"- Accuracy cost of pruning: {c['prune_top1_cost_points']:+.2f} points top-1 after "
        f"fine-tuning ({c['prune_top1_cost_points_without_finetune']:+.2f} before).",
        f"- int8 top-1 drop vs fp32: {c['int8_top1_drop_points']:+.2f} points (goal <= "
        f"{g['int8_top1_drop_max_points']}: {'met' if c['int8_top1_drop_ok'] else 'NOT met'}); "
        f"pruned model: {c['pruned_int8_top1_drop_points']:+.2f} points.",
        "",
        f"Command: `{r['command']}`",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
