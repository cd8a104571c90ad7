"""`edge-opt export --batch N`: the bundle keeps the model's dynamic batch dimension, records
max_batch, and one call on N frames gives each frame what it gets alone; routes that cannot
batch are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edge_sdk
from edge_sdk.batcher import run_batch
from tests.conftest import DATA, run_cli
from tests.optimize.tiny_models import tiny_classifier


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    fixed = tiny_classifier(tmp / "fixed.onnx")
    dynamic = onnx.load(str(fixed))
    for value in (*dynamic.graph.input, *dynamic.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(dynamic, str(tmp / "dynamic.onnx"))
    return tmp, fixed, tmp / "dynamic.onnx"


def test_a_batched_int8_bundle_runs_n_frames_in_one_call(models):
    tmp, _, dynamic = models
    result = run_cli("edge-opt", "export", dynamic, "-t", "x86-int8", "--format", "onnx",
                     "--batch", "4", "--calib", DATA / "calib", "--runs", "3", "-q",
                     "--max-drop", "100", "--out", tmp / "out")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp / "out" / "x86-int8" / "manifest.json").read_text())
    assert manifest["runtime"]["max_batch"] == 4 and manifest["inputs"][0]["shape"][0] == 1
    model = edge_sdk.load(tmp / "out" / "x86-int8", threads=1)
    frames = [np.full((40, 50, 3), v, np.uint8) for v in (10, 90, 170, 250)]
    frames[1][::2] = 0
    batched = run_batch(model, frames, 4)
    assert [d.batch_size for d in batched] == [4] * 4
    for d, frame in zip(batched, frames):
        np.testing.assert_allclose(d.result.scores, model.predict(frame).scores, atol=1e-5)


@pytest.mark.parametrize("extra, words", [
    (["--format", "onnx", "--fixed"], "fixed batch dimension"),
    (["--format", "tflite", "--fixed"], "fixed batch dimension"),
])
def test_routes_that_cannot_batch_are_refused(models, extra, words):
    tmp, fixed, dynamic = models
    model = fixed if "--fixed" in extra else dynamic
    flags = [f for f in extra if f != "--fixed"]
    result = run_cli("edge-opt", "export", model, "-t", "x86-fp32", *flags, "--batch", "2",
                     "--runs", "3", "-q", "--out", tmp / "refused")  # fmt: skip
    assert result.returncode != 0 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
