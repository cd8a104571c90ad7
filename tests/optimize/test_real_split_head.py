"""A multi-output head through `edge-opt export` with nothing but --input-shape (ISSUE 15).

The model: YOLO11n (examples/models/yolo11n_person.onnx, a real trained detector from a pinned
PyPI package) with its head cut where NPU toolchains cut it (Rockchip's rknn_model_zoo, Hailo):
six outputs, box-distribution and class logits per stride, no decode in the graph. No built-in
decoder reads it, so it is `raw`, judged by per-output SQNR against the default 20 dB floor, on
frames of OpenCV's street clip. The cut keeps the dynamic export's symbolic output dims
(`floor(2.0*((height - 1)//2) ...`): once refused as "too long" for the manifest.

PP-PicoDet's eight-output head (test_real_tasks.py) stays under the floor: the damage is its
backbone's (benchmarks/bench_int8_conditioning.py).
"""

from __future__ import annotations

import pytest

from tests.optimize.clip_frames import split_clip
from tests.optimize.real_models import (
    YOLO_HEAD_CONVS,
    cut_yolo_head,
    export,
    manifest_of,
    model_path,
    run_bundle,
)

pytestmark = pytest.mark.timeout(1800)
TARGETS = ("x86-int8", "jetson-int8", "rpi5-int8")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return split_clip(tmp_path_factory.mktemp("frames"))


def test_cut_yolo_head_exports_as_raw_to_every_int8_target(frames, tmp_path):
    model = cut_yolo_head(model_path("yolo11n_person"), tmp_path / "yolo11n_cut.onnx")
    out = tmp_path / "out"
    # --format default: each profile's own format (x86: OpenVINO), not auto's three candidates
    result = export(model, out, "--input-shape", "1x3x640x640", "--format", "default",
                    *(f for t in TARGETS for f in ("-t", t)), "--calib", frames["calib"],
                    "--eval", frames["eval"])
    assert result.returncode == 0, result.stderr
    image = sorted(frames["eval"].iterdir())[0]
    for target in TARGETS:
        manifest = manifest_of(out / target)
        assert manifest["task"]["type"] == "raw"
        # in the source's order and by its names on every format (a TFLite signature holds
        # them as identifiers, "_model_23_cv2_0_...": the manifest keeps the source's)
        names = [o["name"] for o in manifest["outputs"]]
        assert [o["shape"] for o in manifest["outputs"]] == [
            [1, 64, 80, 80], [1, 1, 80, 80], [1, 64, 40, 40], [1, 1, 40, 40], [1, 64, 20, 20],
            [1, 1, 20, 20]]
        assert names == list(YOLO_HEAD_CONVS)
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["passed"] and guard["budget"] == 20 and guard["floor"], guard
        per_output = manifest["metrics"]["fidelity"]["details"]["per_output"]
        assert min(o["sqnr_db"] for o in per_output.values()) >= 20.0, per_output
        line = run_bundle(out / target, image, tmp_path / f"{target}.jsonl")
        # RawOutputs by the source's names on every format (the runtime maps TFLite's back)
        assert set(line["outputs"]) == set(YOLO_HEAD_CONVS)
