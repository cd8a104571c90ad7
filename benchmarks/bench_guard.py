"""EfficientNet-Lite0 int8: how close to FP32 each step gets, and what the accuracy guard costs.

Rows, all on the same held-out photos (examples/data/eval, never used for calibration):
  - onnxruntime's and NNCF's quantizers with their defaults on the FP32 ONNX model, calibrated
    on examples/data/calib, and again calibrated on the evaluation photos themselves (how the
    issue's 0.90-0.95 figures were measured);
  - edge-opt int8 without the guard, bias correction off and on (x86 and Jetson schemes);
  - edge-opt int8 with the accuracy guard at a 2-point budget (top-1 agreement >= 0.98).
Bundles are timed with the same edge_sdk code a device runs, interleaved round by round with
the FP32 bundle. Besides top-1 agreement, each row lists the flipped images with their FP32
top-1/top-2 logit margin: a flip between two nearly tied classes is noise more than damage.
Writes benchmarks/results/guard.json and .md.

    .venv/bin/python benchmarks/bench_guard.py [--rounds 10] [--runs 20] [--tries 32]
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
from optimize.calibration import OrtCalibrationReader, load_images  # noqa: E402
from optimize.engine import ExportRequest, export  # noqa: E402
from optimize.measure import model_outputs, time_interleaved  # noqa: E402
from optimize.modelcard import ModelCard  # noqa: E402
from optimize.quiet import quiet  # noqa: E402
from optimize.report import host_description  # noqa: E402

DATA = ROOT / "examples" / "data"
THREADS = 2
BUDGET_POINTS = 2.0  # top-1 agreement >= 0.98
DECISIVE_MARGIN = 0.1  # FP32 top-1 minus top-2 logit: below this a flip is a near-tie


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20, help="timed calls per bundle per round")
    parser.add_argument("--tries", type=int, default=32, help="the guard's --guard-tries")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    card = ModelCard(labels=None, preprocess={"resize": "center-crop", "mean": [127.0] * 3,
                                              "std": [128.0] * 3})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def build(name: str, targets: list[str], **kw) -> Path:
            export(ExportRequest(
                model=f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build", targets=targets,
                out=tmp / name, fmt="onnx", calib=DATA / "calib", eval=DATA / "eval",
                input_shape=(1, 3, 224, 224), card=card, runs=5, progress=False, **kw))
            return tmp / name

        plain = build("plain", ["x86-fp32", "x86-int8", "jetson-int8"], max_drop=100.0,
                      bias_correction=False)
        corrected = build("corrected", ["x86-int8", "jetson-int8"], max_drop=100.0)
        guarded = build("guarded", ["x86-int8", "jetson-int8"], max_drop=BUDGET_POINTS,
                        guard_tries=args.tries, force=True)
        bundles = {
            "fp32": plain / "x86-fp32",
            "x86-int8, no bias correction, no guard": plain / "x86-int8",
            "x86-int8, bias correction, no guard": corrected / "x86-int8",
            "x86-int8, bias correction + guard": guarded / "x86-int8",
            "jetson-int8, no bias correction, no guard": plain / "jetson-int8",
            "jetson-int8, bias correction, no guard": corrected / "jetson-int8",
            "jetson-int8, bias correction + guard": guarded / "jetson-int8",
        }
        models = {k: edge_sdk.load(p, threads=THREADS) for k, p in bundles.items()}
        spec = models["fp32"].input_spec
        evals = load_images(DATA / "eval", spec, "evaluation")
        calib = load_images(DATA / "calib", spec)
        outputs = {k: model_outputs(m, evals) for k, m in models.items()}
        tensors = list(evals.tensors)
        times = time_interleaved(models, dict.fromkeys(models, tensors), args.rounds, args.runs)
        fp32_onnx = bundles["fp32"] / "model.onnx"
        baselines = {}
        roles = (("calibrated on calib/", calib), ("calibrated on the eval photos", evals))
        for i, (role, images) in enumerate(roles):
            baselines[f"onnxruntime defaults, {role}"] = _ort_defaults(fp32_onnx, images,
                                                                       tmp / f"ort-{i}.onnx")
            baselines[f"NNCF defaults, {role}"] = _nncf_defaults(fp32_onnx, images,
                                                                 tmp / f"nncf-{i}.onnx")
        baseline_outputs = {k: _run(path, evals) for k, path in baselines.items()}
        guard_info = {t: _guard_record(guarded, t) for t in ("x86-int8", "jetson-int8")}
        sizes = {k: (p / "model.onnx").stat().st_size for k, p in bundles.items()}

    ref = outputs["fp32"].reshape(len(tensors), -1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    decisive = margin >= DECISIVE_MARGIN
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    rows = []
    for name, out in [*outputs.items(), *baseline_outputs.items()]:
        out = out.reshape(len(tensors), -1)
        same = out.argmax(1) == ref.argmax(1)
        row = {
            "variant": name,
            "top1_agreement": float(same.mean()),
            "top1_agreement_decisive": float(same[decisive].mean()),
            "mean_abs_diff": float(np.abs(out - ref).mean()),
            "flips": [{"image": evals.names[i], "fp32_margin": round(float(margin[i]), 3)}
                      for i in np.flatnonzero(~same)],
        }
        if name in bundles:
            row["size_ratio"] = sizes[name] / sizes["fp32"]
            row["latency_ms_p50"] = p50[name]
            row["speedup_vs_fp32"] = p50["fp32"] / p50[name]
            if name.endswith("+ guard"):
                row["guard"] = guard_info[name.split(",")[0]]
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    checks = {
        "x86_int8_guarded_agreement": by["x86-int8, bias correction + guard"]["top1_agreement"],
        "jetson_int8_guarded_agreement":
            by["jetson-int8, bias correction + guard"]["top1_agreement"],
    }
    checks["x86_int8_guarded_ok"] = checks["x86_int8_guarded_agreement"] >= 0.98
    checks["jetson_int8_guarded_ok"] = checks["jetson_int8_guarded_agreement"] >= 0.98
    checks["x86_int8_guarded_faster_than_fp32"] = (
        by["x86-int8, bias correction + guard"]["speedup_vs_fp32"] > 1.0)
    result = {"benchmark": "guard", "model": "EfficientNet-Lite0 (ImageNet weights)",
              "host": host_description(), "threads": THREADS, "rounds": args.rounds,
              "runs_per_round": args.runs, "guard_tries": args.tries,
              "budget_points": BUDGET_POINTS, "eval_images": len(tensors),
              "calibration_images": len(calib),
              "near_ties": int((~decisive).sum()), "decisive_margin": DECISIVE_MARGIN,
              "checks": checks, "rows": rows,
              "command": "python benchmarks/bench_guard.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guard.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "guard.md").write_text(md)
    print(md)
    return 0


def markdown(result: dict) -> str:
    table = ["| variant | top-1 agree | agree, decisive | mean abs diff | flips: FP32 margins "
             "| float layers | size x | speed x |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        margins = [f"{f['fp32_margin']:.2f}" for f in r["flips"]]
        flips = ", ".join(margins[:6]) + (f" (+{len(margins) - 6})" if len(margins) > 6 else "")
        kept = len(r["guard"]["kept_float"]) if "guard" in r else "-"
        size = f"{r['size_ratio']:.3f}" if "size_ratio" in r else "-"
        speed = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else "-"
        table.append(f"| {r['variant']} | {r['top1_agreement']:.3f} | "
                     f"{r['top1_agreement_decisive']:.3f} | {r['mean_abs_diff']:.4f} | "
                     f"{len(margins)}: {flips or '-'} | {kept} | {size} | {speed} |")
    md = [f"# int8 accuracy guard, EfficientNet-Lite0, {result['threads']} threads", "",
          f"Host: {result['host']}. {result['eval_images']} held-out images "
          f"({result['near_ties']} with an FP32 top-1/top-2 logit margin under "
          f"{result['decisive_margin']}: 'decisive' leaves them out); "
          f"{result['calibration_images']} calibration images; guard budget "
          f"{result['budget_points']} points, {result['guard_tries']} tries. Latency: "
          f"{result['rounds']} interleaved rounds x {result['runs_per_round']} calls, speed x "
          "= FP32 p50 / p50 (Jetson bundles: onnxruntime on this CPU, not TensorRT).",
          "", *table, "",
          "Checks: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in result["checks"].items())]
    return "\n".join(md) + "\n"


def _guard_record(folder: Path, target: str) -> dict:
    rows = json.loads((folder / "report.json").read_text())["rows"]
    return next(r["accuracy_guard"] for r in rows if r["target"] == target)


def _ort_defaults(fp32: Path, images, out: Path) -> Path:
    """onnxruntime's quantize_static with every option at its default."""
    from onnxruntime.quantization import quantize_static

    with quiet():
        quantize_static(str(fp32), str(out), OrtCalibrationReader(images, "input"))
    return out


def _nncf_defaults(fp32: Path, images, out: Path) -> Path:
    """NNCF's post-training quantization of the ONNX model with its defaults."""
    import nncf
    import onnx

    with quiet():
        model = nncf.quantize(onnx.load(str(fp32)),
                              nncf.Dataset(list(images.tensors), lambda t: {"input": t}),
                              subset_size=len(images))
    onnx.save(model, str(out))
    return out


def _run(path: Path, images) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"input": t})[0] for t in images.tensors])


if __name__ == "__main__":
    sys.exit(main())
