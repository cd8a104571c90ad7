"""Start-up per format: time from `edge_sdk.load` to the first result, in fresh processes.

A camera that restarts (power cut, update, watchdog) is blind until its model answers again.
Each bundle of EfficientNet-Lite0 (real weights) is started in a new Python process, the way a
device starts, three ways: without a compile cache, with an empty cache folder (the first boot
after an install fills it) and with that folder filled (every later boot). The device sets the
folder in its own configuration (EDGE_SDK_CACHE_DIR), never from a bundle. Modes and bundles
are interleaved round by round so the host's noise hits all alike. Writes
benchmarks/results/startup.json and .md.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimize.engine import ExportRequest, export  # noqa: E402
from optimize.modelcard import ModelCard  # noqa: E402
from optimize.report import host_description  # noqa: E402

DATA = ROOT / "examples" / "data"
IMAGE = DATA / "eval" / "baboon.jpg"
THREADS = 2
# (row name, target, format)
BUNDLES = [("openvino int8", "x86-int8", "openvino"), ("openvino fp32", "x86-fp32", "openvino"),
           ("onnxruntime int8", "x86-int8", "onnx"), ("litert int8", "rpi5-int8", "tflite")]
MODES = ("no cache", "cache, first boot", "cache, later boots")

# What runs in each fresh process: import, load, first predict; prints the two times in ms.
PROBE = """
import sys, time
t0 = time.perf_counter()
import cv2, edge_sdk
frame = cv2.imread(sys.argv[2])
t1 = time.perf_counter()
model = edge_sdk.load(sys.argv[1], threads=int(sys.argv[3]))
model.predict(frame)
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000)
"""


def build(tmp: Path) -> dict[str, Path]:
    card = ModelCard(preprocess={"resize": "center-crop", "mean": [127.0] * 3,
                                 "std": [128.0] * 3})
    bundles = {}
    for name, target, fmt in BUNDLES:
        out = tmp / name.replace(" ", "-")
        export(ExportRequest(
            model=f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build", targets=[target],
            out=out, fmt=fmt, calib=DATA / "calib", input_shape=(1, 3, 224, 224), card=card,
            runs=3, max_drop=100.0, progress=False))
        bundles[name] = out / target
    return bundles


def start(bundle: Path, cache: Path | None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_SDK_CACHE_DIR"}
    if cache is not None:
        env["EDGE_SDK_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(IMAGE), str(THREADS)],
                         env=env, capture_output=True, text=True, check=True)
    imports, first = out.stdout.split()
    return float(imports), float(first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    times: dict[tuple[str, str], list[float]] = {}
    imports: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = build(Path(tmp))
        for r in range(args.rounds):
            for name, bundle in bundles.items():
                cache = Path(tmp) / "cache" / name.replace(" ", "-")
                for mode in MODES:
                    if mode == "cache, first boot":
                        shutil.rmtree(cache, ignore_errors=True)
                    imp, first = start(bundle, None if mode == "no cache" else cache)
                    times.setdefault((name, mode), []).append(first)
                    imports.setdefault(name, []).append(imp)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for name, *_ in BUNDLES:
        base = float(np.median(times[(name, "no cache")]))
        for mode in MODES:
            ms = float(np.median(times[(name, mode)]))
            rows.append({"bundle": name, "mode": mode, "startup_ms_median": ms,
                         "startup_ms_all": times[(name, mode)], "ratio_vs_no_cache": ms / base})
        rows[-1]["import_ms_median"] = float(np.median(imports[name]))
    result = {"benchmark": "startup", "model": "EfficientNet-Lite0 (ImageNet weights)",
              "host": host_description(), "load_average_at_start": load, "threads": THREADS,
              "rounds": args.rounds, "rows": rows,
              "measured": "edge_sdk.load + first predict, in a fresh process (imports and "
                          "reading the image excluded)",
              "command": "python benchmarks/bench_startup.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Start-up to first result, EfficientNet-Lite0, {THREADS} threads", "",
             f"Host: {result['host']}; load average {load:.1f} at start"
             + (" (a loaded host: compare ratios, not absolute times)" if load > 1.5 else "")
             + f". Median of {args.rounds} fresh processes per cell, interleaved.", "",
             "| bundle | mode | start-up ms | x no cache |", "|---|---|---|---|"]
    lines += [f"| {r['bundle']} | {r['mode']} | {r['startup_ms_median']:.0f} | "
              f"{r['ratio_vs_no_cache']:.2f} |" for r in rows]
    lines += ["", "The cache folder is the device's own (EDGE_SDK_CACHE_DIR); only OpenVINO "
              "reuses compiled models from it, so the other runtimes' rows show the noise."]
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
