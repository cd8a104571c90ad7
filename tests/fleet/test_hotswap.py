"""SwappableModel + HealthGate on real bundles, driven the way Pipeline drives a model."""

from __future__ import annotations

import numpy as np

import edge_sdk
from edge_sdk.health_gate import GateSpec, HealthGate
from edge_sdk.hotswap import SwappableModel
from edge_sdk.pipeline import Pipeline
from tests.fleet.fleet_helpers import frames_folder, make_bundle


def _frame(model: SwappableModel, image: np.ndarray):
    feeds, transform = model.preprocess(image)
    return model.decode(model.backend.infer(feeds), transform)


def test_nan_candidate_fails_the_gate_and_its_frames_are_served_by_the_old_model(tmp_path):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    bad = edge_sdk.load(make_bundle(tmp_path / "bad", nan=True))
    model = SwappableModel(old)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    expected = old.predict(image)
    gate = HealthGate(GateSpec(frames=5), None)
    model.try_model(bad, gate)
    result = _frame(model, image)
    assert np.isfinite(result.scores).all()
    np.testing.assert_allclose(result.scores, expected.scores)
    verdict = gate.verdict()
    assert verdict.passed is False and "non-finite" in verdict.reason


def test_errors_above_the_rate_fail_the_gate_and_results_keep_flowing(tmp_path):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    new = edge_sdk.load(make_bundle(tmp_path / "new", seed=2))

    class Broken:  # a runtime that fails at inference, as a bad driver or a bad model does
        name = "broken"

        def infer(self, feeds):
            raise RuntimeError("kernel failed")

    new.backend = Broken()
    model = SwappableModel(old)
    gate = HealthGate(GateSpec(frames=200, max_error_rate=0.01), None)
    model.try_model(new, gate)
    image = np.zeros((48, 64, 3), np.uint8)
    for _ in range(2):  # 2 errors in a 200-frame gate: 1 %, not above it
        assert _frame(model, image).labels  # served by the old model
    assert gate.verdict().passed is None
    _frame(model, image)
    verdict = gate.verdict()
    assert verdict.passed is False and "kernel failed" in verdict.reason


def test_a_failed_decode_counts_its_frame_once(tmp_path):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    new = edge_sdk.load(make_bundle(tmp_path / "new", seed=2))

    def broken_decode(outputs, transform):  # a decoder bug that only the new bundle has
        raise ValueError("bad output layout")

    new.decode = broken_decode
    model = SwappableModel(old)
    gate = HealthGate(GateSpec(frames=200, max_error_rate=0.01), None)
    model.try_model(new, gate)
    image = np.zeros((48, 64, 3), np.uint8)
    for _ in range(2):
        assert _frame(model, image).labels  # served by the old model
    verdict = gate.verdict()
    assert (verdict.frames, verdict.errors, verdict.passed) == (2, 2, None)


def test_a_healthy_candidate_passes_and_a_pipeline_swaps_between_frames(tmp_path):
    old = edge_sdk.load(make_bundle(tmp_path / "old", seed=1))
    new = edge_sdk.load(make_bundle(tmp_path / "new", seed=2))
    model = SwappableModel(old)
    frames = frames_folder(tmp_path / "frames", count=12)
    seen = []
    pipeline = Pipeline(str(frames), model)
    for i, result in enumerate(pipeline):
        seen.append(result.result.scores.copy())
        # preprocess picks the frame's model: it must not run ahead in the capture thread
        assert result.frame.prepare_ms == 0
        if i == 5:
            gate = HealthGate(GateSpec(frames=3, min_speed_ratio=0.0), model.baseline_ms())
            model.try_model(new, gate)
    assert gate.verdict().passed is True
    image = __import__("cv2").imread(str(sorted(frames.iterdir())[8]))
    np.testing.assert_allclose(seen[8], new.predict(image).scores, rtol=1e-5)
    image = __import__("cv2").imread(str(sorted(frames.iterdir())[2]))
    np.testing.assert_allclose(seen[2], old.predict(image).scores, rtol=1e-5)


def test_throughput_gate_judges_the_warm_median_and_ignores_sub_millisecond_noise():
    slow = HealthGate(GateSpec(frames=10), baseline_ms=10.0)
    for ms in [50.0] * 3 + [14.0] * 7:  # cold first frames do not count; 10/14 = 71 %
        slow.frame(ms)
    verdict = slow.verdict()
    assert verdict.passed is False and "throughput 71%" in verdict.reason
    fine = HealthGate(GateSpec(frames=10), baseline_ms=10.0)
    for ms in [50.0] * 3 + [11.0] * 7:  # 91 %
        fine.frame(ms)
    assert fine.verdict().passed is True
    tiny = HealthGate(GateSpec(frames=10), baseline_ms=0.2)
    for _ in range(10):
        tiny.frame(0.4)  # 50 %, but 0.2 ms per frame: noise, not a slower camera
    assert tiny.verdict().passed is True
