"""Render an `edge-opt bench` report.html in headless Chromium and check the charts are drawn.

    .venv/bin/python benchmarks/render_bench_report.py [REPORT.html] [--out benchmarks/results]

Without REPORT.html it makes one first, as a user would, in one command: `edge-opt bench` of
EfficientNet-Lite0 (real weights) for x86 fp32/fp16/int8/int4 (OpenVINO), rpi5-int8 and
jetson-int8, on a labelled folder made from examples/data (30 photos and views of 5 ImageNet
classes); about a minute on 2 cores.

Chromium (`apt-get install chromium`) runs offline with a throwaway profile and takes a
screenshot. The check: every chart embedded in the page is found in the screenshot by template
matching (OpenCV normalised cross-correlation >= 0.8 at the scale the browser drew it) and the
region it was found in is not blank. Writes bench_report.png and bench_report.json to --out;
exits 1 when a chart is missing.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
WINDOW = (1280, 2200)
MIN_SCORE = 0.8  # normalised cross-correlation of a chart with the screenshot region
MIN_STD = 10.0  # grey-level spread of that region: a blank or flat box is ~0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars"]
# photos in examples/data/eval (and their views/) whose ImageNet class is clear
LABELLED = {"baboon": "baboon", "fox squirrel": "squirrel_cls", "orange": "orange",
            "espresso": "skimage_coffee", "tabby": "skimage_chelsea"}
TARGETS = ["x86-fp32", "x86-fp16", "x86-int8", "x86-int4", "rpi5-int8", "jetson-int8"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, help="a report.html (default: make one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    if chromium is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        report = args.report or make_report(Path(tmp))
        args.out.mkdir(parents=True, exist_ok=True)
        shot = args.out / "bench_report.png"
        version = screenshot(chromium, report, shot, Path(tmp))
        result = check(report, shot)
        result.update(report=str(args.report or "made by this script (temporary folder)"),
                      chromium=version, window=list(WINDOW))
        if args.report is None:
            data = json.loads((report.parent / "report.json").read_text())
            result["bench"] = {
                "pareto_front": data["pareto_front"], "reference": data["reference"],
                "rows": [{k: r[k] for k in ("name", "format", "precision", "size_bytes",
                                            "latency_ms_p50", "latency_ms_p99", "prepost_ms_p50",
                                            "peak_rss_bytes", "top1", "top5", "agree")}
                         for r in data["rows"]]}
    (args.out / "bench_report.json").write_text(json.dumps(result, indent=1) + "\n")
    for c in result["charts"]:
        print(f"{c['alt']:<28} score {c['score']:.3f}  scale {c['scale']:.3f}  "
              f"std {c['std']:.1f}  at {c['box']}")
    print(f"{'OK' if result['ok'] else 'FAILED'}: {shot}")
    return 0 if result["ok"] else 1


def make_report(tmp: Path) -> Path:
    """`edge-opt bench` from the model: builds the bundles, then compares them on labelled data."""
    bench, val = tmp / "bench", tmp / "val"
    for name, stem in LABELLED.items():
        (val / name).mkdir(parents=True)
        for f in [DATA / "eval" / f"{stem}.jpg", *(DATA / "eval" / "views").glob(f"{stem}_*")]:
            shutil.copy(f, val / name / f.name)
    subprocess.run([sys.executable, "-m", "optimize.cli", "bench",
                    f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build",
                    "--input-shape", "1x3x224x224", "--resize", "center-crop", "--mean", "127",
                    "--std", "128", "--labels", str(DATA / "imagenet_labels.txt"),
                    "--calib", str(DATA / "calib"), "--data", str(val), "--out", str(bench),
                    *[a for t in TARGETS for a in ("--target", t)]], check=True, cwd=ROOT)
    return bench / "report.html"


def screenshot(chromium: str, report: Path, shot: Path, tmp: Path) -> str:
    profile = tempfile.mkdtemp(dir=tmp)
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    report.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return version.strip()


def check(report: Path, shot: Path) -> dict:
    """Find each embedded chart in the screenshot; the page must not need the network."""
    page = report.read_text(encoding="utf-8")
    screen = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    charts = []
    for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page):
        chart = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8),
                             cv2.IMREAD_GRAYSCALE)
        score, scale, (x, y, w, h) = locate(screen, chart)
        region = screen[y:y + h, x:x + w]
        charts.append({"alt": alt, "score": round(score, 4), "scale": round(scale, 4),
                       "box": [x, y, w, h], "std": round(float(region.std()), 2)})
    boxes = {tuple(c["box"][:2]) for c in charts}
    ok = (len(charts) >= 4 and len(boxes) == len(charts)
          and all(c["score"] >= MIN_SCORE and c["std"] >= MIN_STD for c in charts)
          and "http://" not in page and "https://" not in page)
    return {"ok": ok, "charts": charts, "page_std": round(float(screen.std()), 2),
            "min_score": MIN_SCORE, "min_std": MIN_STD}


def locate(screen: np.ndarray, chart: np.ndarray) -> tuple[float, float, tuple[int, ...]]:
    """Best (score, scale, box) of `chart` in `screen`: coarse search at 1/4 size, then refine.

    Both are blurred a little first: the browser and OpenCV resample thin lines and text
    differently, and the blur keeps that from counting as a mismatch.
    """
    def soft(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (5, 5), 1.5)

    def match(scale: float, shrink: float) -> tuple[float, tuple[int, int]]:
        size = (round(chart.shape[1] * scale * shrink), round(chart.shape[0] * scale * shrink))
        small = cv2.resize(screen, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        if size[0] < 8 or size[1] < 8 or size[0] > small.shape[1] or size[1] > small.shape[0]:
            return -1.0, (0, 0)
        tpl = cv2.resize(chart, size, interpolation=cv2.INTER_AREA)
        result = cv2.matchTemplate(soft(small), soft(tpl), cv2.TM_CCOEFF_NORMED)
        _, best, _, loc = cv2.minMaxLoc(result)
        return float(best), loc

    coarse = max(np.arange(0.3, 1.3, 0.02), key=lambda s: match(s, 0.25)[0])
    fine = max(np.arange(coarse - 0.02, coarse + 0.021, 0.004), key=lambda s: match(s, 1.0)[0])
    score, (x, y) = match(fine, 1.0)
    return score, float(fine), (int(x), int(y), round(chart.shape[1] * fine),
                                round(chart.shape[0] * fine))


if __name__ == "__main__":
    sys.exit(main())
