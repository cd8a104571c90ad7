"""Every format x precision for EfficientNet-Lite0 (real weights) at 2 threads, in one run.

Bundles are built with the export engine (ONNX, OpenVINO IR, TFLite when its exporter is
installed, plus OpenVINO int8 with NNCF's defaults as the reference peers reach), then timed
with the same edge_sdk code a device runs, interleaved round by round so the machine's noise
hits all of them alike. Writes benchmarks/results/formats.json and .md.

    .venv/bin/python benchmarks/bench_formats.py [--rounds 15] [--runs 20]
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
from optimize.formats import FORMATS  # noqa: E402
from optimize.measure import model_outputs, time_interleaved  # noqa: E402
from optimize.modelcard import ModelCard  # noqa: E402
from optimize.report import host_description  # noqa: E402

DATA = ROOT / "examples" / "data"
THREADS = 2
PRECISIONS = ["fp32", "fp16", "int8", "int4"]
# (row name, target, format, scheme override)
GROUPS = [
    ("onnx", "x86", "onnx", None),
    ("openvino", "x86", "openvino", None),
    ("openvino-nncf-defaults", "x86", "openvino", "nncf-int8"),
    ("tflite", "rpi5", "tflite", None),
]


def build(tmp: Path) -> dict[str, Path]:
    card = ModelCard(preprocess={"resize": "center-crop", "mean": [127.0] * 3,
                                 "std": [128.0] * 3})
    bundles = {}
    for name, profile, fmt, scheme in GROUPS:
        if fmt not in FORMATS:
            print(f"skipping {name}: no {fmt} exporter in this build", file=sys.stderr)
            continue
        precisions = ["int8"] if scheme else PRECISIONS
        out = tmp / name
        try:
            export(ExportRequest(
                model=f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build",
                targets=[f"{profile}-{p}" for p in precisions], out=out, fmt=fmt,
                scheme=scheme, calib=DATA / "calib", eval=DATA / "eval",
                input_shape=(1, 3, 224, 224), card=card, runs=3, max_drop=100.0,
                progress=False))
        except Exception as exc:  # a format that cannot build a precision here: say which
            print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        for p in precisions:
            if (out / f"{profile}-{p}" / "manifest.json").exists():
                bundles[f"{name}/{p}"] = out / f"{profile}-{p}"
    return bundles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = build(Path(tmp))
        models = {k: edge_sdk.load(v, threads=THREADS) for k, v in bundles.items()}
        sizes = {k: sum((v / f.path).stat().st_size for key, f in models[k].manifest.files.items()
                        if key != "labels") for k, v in bundles.items()}
        # Each bundle gets the eval photos preprocessed by its own manifest (e.g. int8 inputs).
        per_model = {k: load_images(DATA / "eval", m.input_spec, "evaluation")
                     for k, m in models.items()}
        images = per_model["onnx/fp32"]
        outputs = {k: model_outputs(m, per_model[k]) for k, m in models.items()}
        inputs = {k: list(per_model[k].tensors) for k in models}
        times = time_interleaved(models, inputs, args.rounds, args.runs)
    ref = outputs["onnx/fp32"].reshape(len(images), -1)
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    rows = []
    for k in models:
        out = outputs[k].reshape(len(images), -1)
        rows.append({"bundle": k, "backend": models[k].backend.name, "size_bytes": sizes[k],
                     "size_ratio": sizes[k] / sizes["onnx/fp32"],
                     "latency_ms_p50": p50[k], "latency_ms_p95": float(np.percentile(times[k], 95)),
                     "latency_ratio_vs_ort_fp32": p50[k] / p50["onnx/fp32"],
                     "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                     "max_abs_diff": float(np.max(np.abs(out - ref)))})
    by = {r["bundle"]: r for r in rows}
    checks = {}
    if "openvino/int8" in by and "openvino-nncf-defaults/int8" in by:
        ours, nncf = by["openvino/int8"], by["openvino-nncf-defaults/int8"]
        checks = {"x86_int8_vs_nncf_latency_ratio": ours["latency_ms_p50"] / nncf["latency_ms_p50"],
                  "x86_int8_at_least_as_fast_as_nncf": ours["latency_ms_p50"]
                  <= nncf["latency_ms_p50"],
                  "x86_int8_agreement": ours["top1_agreement"],
                  "nncf_defaults_agreement": nncf["top1_agreement"],
                  "x86_int8_higher_agreement": ours["top1_agreement"] > nncf["top1_agreement"]}
    result = {"benchmark": "formats", "model": "EfficientNet-Lite0 (ImageNet weights)",
              "host": host_description(), "threads": THREADS, "rounds": args.rounds,
              "runs_per_round": args.runs, "eval_images": len(images), "checks": checks,
              "rows": rows, "command": "python benchmarks/bench_formats.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "formats.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Formats x precisions, EfficientNet-Lite0, {THREADS} threads", "",
             f"Host: {result['host']}. {args.rounds} interleaved rounds x {args.runs} calls; "
             f"top-1 agreement with onnxruntime FP32 on {len(images)} held-out images.", "",
             "| bundle | backend | size MB | size x | p50 ms | p95 ms | x ORT fp32 | top-1 agree "
             "| max abs diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bundle']} | {r['backend']} | {r['size_bytes'] / 1e6:.2f} | "
                     f"{r['size_ratio']:.3f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['latency_ms_p95']:.2f} | {r['latency_ratio_vs_ort_fp32']:.2f} | "
                     f"{r['top1_agreement']:.3f} | {r['max_abs_diff']:.3g} |")
    lines += ["", "Checks: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in checks.items())]
    (args.out / "formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
