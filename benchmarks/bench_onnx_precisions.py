"""EfficientNet-Lite0 (real weights) at 2 threads: fp32 / fp16 / int8 / int4 ONNX side by side.

Builds the bundles with `edge-opt export` (the engine), then times every bundle with the same
edge_sdk code a device runs, interleaving the bundles round by round so the machine's noise
hits all of them alike. Writes benchmarks/results/onnx_precisions.json and .md.

    .venv/bin/python benchmarks/bench_onnx_precisions.py [--rounds 15] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_sdk  # noqa: E402
from optimize.calibration import load_images  # noqa: E402
from optimize.engine import ExportRequest, export  # noqa: E402
from optimize.measure import model_outputs, time_interleaved  # noqa: E402
from optimize.modelcard import ModelCard  # noqa: E402
from optimize.report import host_description  # noqa: E402

DATA = ROOT / "examples" / "data"
TARGETS = ["x86-fp32", "x86-fp16", "x86-int8", "x86-int4", "jetson-int8"]
THREADS = 2
GOALS = {"int8_size_ratio_max": 0.27, "fp16_size_ratio_max": 0.52,
         "x86_int8_faster_than_fp32": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20, help="timed calls per bundle per round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        card = ModelCard(labels=None, preprocess={"resize": "center-crop", "mean": [127.0] * 3,
                                                  "std": [128.0] * 3})
        export(ExportRequest(
            model=f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build", targets=TARGETS,
            out=Path(tmp), fmt="onnx", calib=DATA / "calib", eval=DATA / "eval",
            input_shape=(1, 3, 224, 224), card=card, runs=5, max_drop=100.0, progress=False))
        models = {t: edge_sdk.load(Path(tmp) / t, threads=THREADS) for t in TARGETS}
        sizes = {t: (Path(tmp) / t / "model.onnx").stat().st_size for t in TARGETS}
        images = load_images(DATA / "eval", models["x86-fp32"].input_spec, "evaluation")
        outputs = {t: model_outputs(m, images) for t, m in models.items()}
        tensors = list(images.tensors)
        times = time_interleaved(models, dict.fromkeys(models, tensors), args.rounds, args.runs)

    ref_top1 = outputs["x86-fp32"].reshape(len(tensors), -1).argmax(1)
    p50 = {t: float(np.percentile(v, 50)) for t, v in times.items()}
    rows = []
    for t in TARGETS:
        top1 = outputs[t].reshape(len(tensors), -1).argmax(1)
        rows.append({
            "target": t,
            "size_bytes": sizes[t],
            "size_ratio": sizes[t] / sizes["x86-fp32"],
            "latency_ms_p50": p50[t],
            "latency_ms_p95": float(np.percentile(times[t], 95)),
            "latency_ratio_vs_fp32": p50[t] / p50["x86-fp32"],
            "top1_agreement": float(np.mean(top1 == ref_top1)),
            "max_abs_diff": float(np.max(np.abs(outputs[t] - outputs["x86-fp32"]))),
        })
    by = {r["target"]: r for r in rows}
    checks = {
        "int8_size_ratio": by["x86-int8"]["size_ratio"],
        "int8_size_ratio_ok": by["x86-int8"]["size_ratio"] <= GOALS["int8_size_ratio_max"],
        "fp16_size_ratio": by["x86-fp16"]["size_ratio"],
        "fp16_size_ratio_ok": by["x86-fp16"]["size_ratio"] <= GOALS["fp16_size_ratio_max"],
        "x86_int8_speedup": p50["x86-fp32"] / p50["x86-int8"],
        "x86_int8_faster_ok": p50["x86-int8"] < p50["x86-fp32"],
    }
    result = {"benchmark": "onnx_precisions", "model": "EfficientNet-Lite0 (ImageNet weights)",
              "host": host_description(), "threads": THREADS, "rounds": args.rounds,
              "runs_per_round": args.runs, "eval_images": len(tensors), "goals": GOALS,
              "checks": checks, "rows": rows,
              "command": "python benchmarks/bench_onnx_precisions.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_precisions.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| target | size MB | size x fp32 | p50 ms | p95 ms | latency x fp32 | top-1 agree "
             "| max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['target']} | {r['size_bytes'] / 1e6:.2f} | {r['size_ratio']:.3f} | "
                     f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
                     f"{r['latency_ratio_vs_fp32']:.2f} | {r['top1_agreement']:.3f} | "
                     f"{r['max_abs_diff']:.3g} |")
    md = [f"# ONNX precisions, EfficientNet-Lite0, {THREADS} threads", "",
          f"Host: {result['host']}. {args.rounds} interleaved rounds x {args.runs} calls; "
          f"top-1 agreement with fp32 on {len(tensors)} held-out images.", "", *table, "",
          "Checks: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in checks.items())]
    (args.out / "onnx_precisions.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
