"""A rollback (`settle(old)` from the deploy agent's thread) landing in the middle of a frame
the candidate is running: the frame keeps the fallback and gate it started with, so the
camera thread never dies and no error or NaN of the failed candidate is published."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import edge_sdk
from edge_sdk.health_gate import GateSpec, HealthGate
from edge_sdk.hotswap import SwappableModel
from edge_sdk.pipeline import Pipeline
from tests.fleet.fleet_helpers import frames_folder, make_bundle


class _SettlingBackend:
    """The candidate's runtime; on its first frame the agent's rollback lands while it runs
    (as when the gate's verdict comes in during that frame), then it fails as `mode` says."""

    name = "settling"

    def __init__(self, inner, swappable: SwappableModel, old, mode: str) -> None:
        self.inner, self.swappable, self.old, self.mode = inner, swappable, old, mode
        self.settled = False

    def infer(self, feeds):
        if not self.settled:
            self.settled = True
            self.swappable.settle(self.old)
        if self.mode == "error":
            raise RuntimeError("CUDA error: out of memory")
        return self.inner.infer(feeds)  # "nan": the bundle gives NaN


def _candidate(tmp_path, mode: str):
    return edge_sdk.load(make_bundle(tmp_path / "new", seed=2, nan=(mode == "nan")))


@pytest.mark.parametrize("mode", ["error", "nan"])
def test_rollback_during_the_candidates_inference_keeps_the_pipeline_and_its_results(
        tmp_path, mode):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    cand = _candidate(tmp_path, mode)
    model = SwappableModel(old)
    cand.backend = _SettlingBackend(cand.backend, model, old, mode)
    frames = frames_folder(tmp_path / "frames", count=8)
    gate = HealthGate(GateSpec(frames=30), None)
    results = []
    for i, result in enumerate(Pipeline(str(frames), model)):  # an exception here fails it
        results.append(result.result.scores.copy())
        if i == 2:
            model.try_model(cand, gate)  # frame 3 goes to the candidate; settle lands in it
    assert cand.backend.settled
    assert len(results) == 8  # every frame has a result
    for i, scores in enumerate(results):
        image = cv2.imread(str(sorted(frames.iterdir())[i]))
        assert np.isfinite(scores).all(), f"frame {i}"
        np.testing.assert_allclose(scores, old.predict(image).scores, rtol=1e-5)
    assert model.current is old


@pytest.mark.parametrize("mode", ["error", "nan"])
def test_rollback_between_preprocess_and_infer_serves_the_frame_by_the_old_model(
        tmp_path, mode):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    cand = _candidate(tmp_path, mode)
    if mode == "error":
        class Broken:
            name = "broken"

            def infer(self, feeds):
                raise RuntimeError("kernel failed")

        cand.backend = Broken()
    model = SwappableModel(old)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    model.try_model(cand, HealthGate(GateSpec(frames=30), None))
    feeds, transform = model.preprocess(image)  # the frame's model: the candidate
    model.settle(old)  # the agent rolls back here
    result = model.decode(model.backend.infer(feeds), transform)
    assert np.isfinite(result.scores).all()
    np.testing.assert_allclose(result.scores, old.predict(image).scores, rtol=1e-5)


def test_rollback_during_a_failing_decode_serves_the_frame_by_the_old_model(tmp_path):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    cand = edge_sdk.load(make_bundle(tmp_path / "new", seed=2))
    model = SwappableModel(old)

    def failing_decode(outputs, transform):  # a decoder bug the candidate brings along
        model.settle(old)
        raise ValueError("decoder: bad output shape")

    cand.decode = failing_decode
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    model.try_model(cand, HealthGate(GateSpec(frames=30), None))
    feeds, transform = model.preprocess(image)
    result = model.decode(model.backend.infer(feeds), transform)
    np.testing.assert_allclose(result.scores, old.predict(image).scores, rtol=1e-5)
