"""The `db-text` decoder: text boxes from a DB text detector's map (PP-OCRv4 det, the real
model, on rendered document pages; examples/models/ppocrv4_det.onnx)."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge_sdk.decoders import build_decoder
from edge_sdk.errors import ManifestError
from edge_sdk.preprocess import FrameTransform
from examples.decoders.render_pages import render_page
from tests.optimize.real_models import model_path

SIZE = 640


def _run(session: ort.InferenceSession, page: np.ndarray):
    """PP-OCRv4 as RapidOCR feeds it: BGR, (x - 127.5) / 127.5, here stretched to 640 x 640."""
    h, w = page.shape[:2]
    x = ((cv2.resize(page, (SIZE, SIZE)).astype(np.float32) - 127.5) / 127.5)
    outputs = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})
    transform = FrameTransform(SIZE / w, SIZE / h, frame_w=w, frame_h=h, input_w=SIZE,
                               input_h=SIZE)
    return build_decoder("db-text", {})(outputs, transform)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path("ppocrv4_det")),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", [3, 11])
def test_boxes_cover_the_lines_of_text_on_a_page(session, seed):
    page = render_page(seed, None)  # no photo: every dark pixel is text or a table rule
    found = _run(session, page)
    assert len(found) >= 10 and set(found.class_ids.tolist()) == {0}
    assert found.labels == ("text",) * len(found)
    assert found.data["quad"].shape == (len(found), 4, 2)
    assert len(found.to_dict()["quads"]) == len(found)  # what edge-run's JSON lines carry
    assert ((found.scores >= 0.6) & (found.scores <= 1.0)).all()
    ink = page.min(axis=2) < 100
    covered = np.zeros_like(ink)
    heights = []
    for x0, y0, x1, y1 in np.round(found.xyxy).astype(int):
        box = ink[y0:y1, x0:x1]
        assert box.mean() > 0.03, (x0, y0, x1, y1)  # a box holds ink, never blank paper
        covered[y0:y1, x0:x1] = True
        heights.append(y1 - y0)
    assert covered[ink].mean() > 0.6  # the rest: the tables' rules, which are not text
    assert covered.mean() < 0.4
    assert np.mean([20 <= h <= 100 for h in heights]) >= 0.9  # a line of text each


def test_a_blank_page_has_no_text(session):
    assert len(_run(session, np.full((1754, 1240, 3), 250, np.uint8))) == 0


def test_a_map_smaller_than_the_input_grows_each_region_back_in_frame_pixels():
    """DB predicts a shrunk kernel: a 100 x 20 region grows by area x 1.5 / perimeter = 12.5
    map pixels each side; a map at half the input's size doubles it onto the input, and the
    frame here is the input at half scale again."""
    prob = np.zeros((1, 1, 320, 320), np.float32)
    prob[0, 0, 50:70, 100:200] = 0.9
    transform = FrameTransform(0.5, 0.5, frame_w=1280, frame_h=1280, input_w=640, input_h=640)
    found = build_decoder("db-text", {})([prob], transform)
    assert len(found) == 1 and found.scores[0] == pytest.approx(0.9, abs=0.02)
    # minAreaRect spans pixel corners to corners (99 x 19 here), hence the tolerance
    expected = np.array([100 - 12.5, 50 - 12.5, 200 + 12.5, 70 + 12.5]) * 4
    assert found.xyxy[0] == pytest.approx(expected, abs=12)


def test_a_faint_region_or_a_sliver_is_not_text():
    prob = np.zeros((1, 1, 64, 64), np.float32)
    prob[0, 0, 10:20, 10:40] = 0.45  # over the pixel threshold, under the box threshold
    prob[0, 0, 40:41, 5:60] = 0.95  # one pixel high
    found = build_decoder("db-text", {})([prob], FrameTransform(1.0, 1.0))
    assert len(found) == 0
    assert len(build_decoder("db-text", {"conf_threshold": 0.4})(
        [prob], FrameTransform(1.0, 1.0))) == 1


@pytest.mark.parametrize("outputs", [
    [np.zeros((1, 5, 8400), np.float32)],
    [np.zeros((1, 2, 64, 64), np.float32)],
    [np.zeros((1, 1, 64, 64), np.float32)] * 2,
])
def test_outputs_that_are_not_one_map_are_refused(outputs):
    with pytest.raises(ManifestError, match="db-text: expected one probability map"):
        build_decoder("db-text", {})(outputs, FrameTransform(1.0, 1.0))


@pytest.mark.parametrize("params", [{"threshold": 1.5}, {"conf_threshold": "high"},
                                    {"unclip_ratio": -1}, {"min_size": 0},
                                    {"max_detections": True}])
def test_bad_parameters_name_themselves(params):
    with pytest.raises(ManifestError, match=f"db-text: {next(iter(params))}"):
        build_decoder("db-text", params)


def _page_map(shift: int) -> list[np.ndarray]:
    """A probability map with five text lines, each 20 map pixels high, moved down `shift`."""
    prob = np.zeros((1, 1, 256, 256), np.float32)
    for row in range(5):
        y = 20 + 45 * row + shift
        prob[0, 0, y:y + 20, 30:220] = 0.9
    return [prob]


def test_text_lines_are_judged_at_iou_05_as_icdar_does():
    """The same boxes a few pixels lower: every line still found (mAP@0.5 and F1 1.0) though
    their IoU is under 0.95; as text lines (db-text) that costs nothing, as a generic detector's
    boxes it would cost the points mAP@0.5:0.95 loses."""
    from edge_sdk.manifest import TaskSpec
    from optimize.tasks import Scoring, get_task

    names = tuple(f"page{i}.png" for i in range(3))
    ref = [_page_map(0) for _ in names]
    got = [_page_map(3) for _ in names]
    fid = get_task("detect").fidelity(
        ref, got, Scoring(TaskSpec("detect", "db-text", {}), ("text",), names, ("map",)))
    assert fid.metric == "mAP@0.5 vs FP32"
    assert fid.details["map50"] == pytest.approx(1.0) and fid.details["f1"] == 1.0
    assert fid.details["map50_95"] < 0.9
    assert fid.loss == pytest.approx(0.0, abs=1e-6)
    assert fid.details["fp32_boxes"] == 5 * len(names)


def test_more_regions_than_max_detections_keeps_the_best_scored():
    """The decoder kept the first max_detections regions OpenCV's contour search found
    (bottom of the map first), not the best: faint regions in, the surest text out."""
    prob = np.zeros((1, 1, 200, 100), np.float32)
    sure = {}
    for i, score in enumerate([0.95, 0.65, 0.9, 0.7, 0.85, 0.62, 0.8, 0.75]):
        prob[0, 0, 10 + 24 * i:20 + 24 * i, 10:90] = score
        sure[10 + 24 * i] = score
    found = build_decoder("db-text", {"max_detections": 3})([prob], FrameTransform(1.0, 1.0))
    assert found.scores.tolist() == pytest.approx([0.95, 0.9, 0.85], abs=1e-3)
    centres = found.data["quad"][:, :, 1].mean(axis=1)  # each box is where its region is
    tops = [min(sure, key=lambda top, c=c: abs(top + 5 - c)) for c in centres]
    assert [sure[t] for t in tops] == pytest.approx([0.95, 0.9, 0.85])
    everything = build_decoder("db-text", {})([prob], FrameTransform(1.0, 1.0))
    assert len(everything) == 8 and (np.diff(everything.scores) <= 0).all()
