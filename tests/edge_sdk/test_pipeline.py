"""The pipeline end to end on a detector-shaped bundle whose answers are known exactly.

`tiny_detector` is a real ONNX graph that finds the bright rectangle in the top half and in
the bottom half of its 320x320 input and emits them as Ultralytics end2end rows
(x1, y1, x2, y2, score, class) for the `yolo-nms` decoder. Synthetic 640x480 frames carry two
white rectangles moving in opposite directions, so every stage can be checked against the
truth: letterbox preprocessing, boxes mapped back to frame pixels, track ids, zone and line
events, sinks and metrics.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_sdk
from edge_sdk.errors import EdgeError
from edge_sdk.model import usable_cores
from edge_sdk.sinks import CallbackSink, Sink
from edge_sdk.sources import Source
from tests.conftest import run_cli
from tests.edge_sdk.test_sources import ListReader
from tests.optimize.tiny_models import tiny_classifier

W, H = 640, 480
SIZE = 320
FRAMES = 45
ZONES = {
    "zones": [{"name": "right", "polygon": [[320, 0], [640, 0], [640, 480], [320, 480]]}],
    "lines": [{"name": "middle", "start": [320, 0], "end": [320, 480]}],
}


def tiny_detector(path):
    """(1, 3, 320, 320) -> (1, 2, 6): the bounding box of pixels > 0.6 in each input half."""
    nodes, inits = [], []

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    grey = node("ReduceMax", ["images"], "grey", axes=[1], keepdims=0)  # (1, 320, 320)
    mask = node("Cast", [node("Greater", [grey, const("thr", 0.6, np.float32)], "bright")],
                "mask", to=TensorProto.FLOAT)  # fmt: skip
    const("rev_start", [-1]), const("rev_end", [-(2**62)]), const("rev_step", [-1])
    const("axis1", [1])
    rows = []
    for half, (top, bottom) in enumerate(((0, SIZE // 2), (SIZE // 2, SIZE))):
        h = f"h{half}"
        part = node("Slice", [mask, const(f"{h}_s", [top]), const(f"{h}_e", [bottom]),
                              const(f"{h}_a", [1])], f"{h}_part")  # fmt: skip
        cols = node("ReduceMax", [part], f"{h}_cols", axes=[1], keepdims=0)  # (1, 320)
        rws = node("ReduceMax", [part], f"{h}_rows", axes=[2], keepdims=0)  # (1, 160)

        def first(profile, tag):  # index of the first bright pixel
            return node("ArgMax", [profile], f"{tag}_first", axis=1, keepdims=1)

        def end(profile, length, tag):  # one past the last bright pixel
            rev = node("Slice", [profile, "rev_start", "rev_end", "axis1", "rev_step"],
                       f"{tag}_rev")  # fmt: skip
            last = node("ArgMax", [rev], f"{tag}_last", axis=1, keepdims=1)
            return node("Sub", [const(f"{tag}_len", [[length]]), last], f"{tag}_end")

        offset = const(f"{h}_off", [[top]])
        x1, x2 = first(cols, f"{h}_x"), end(cols, SIZE, f"{h}_x")
        y1 = node("Add", [first(rws, f"{h}_y"), offset], f"{h}_y1")
        y2 = node("Add", [end(rws, bottom - top, f"{h}_y"), offset], f"{h}_y2")
        box = node("Cast", [node("Concat", [x1, y1, x2, y2], f"{h}_box_i", axis=1)],
                   f"{h}_box", to=TensorProto.FLOAT)  # fmt: skip
        score = node("ReduceMax", [cols], f"{h}_score", axes=[1], keepdims=1)
        cls = const(f"{h}_cls", [[0.0]], np.float32)
        row = node("Concat", [box, score, cls], f"{h}_row", axis=1)  # (1, 6)
        rows.append(node("Unsqueeze", [row, "axis1"], f"{h}_row3"))  # (1, 1, 6)
    nodes.append(helper.make_node("Concat", rows, ["output0"], axis=1))
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 2, 6])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def truth(t):
    """Frame t's two boxes (x1, y1, x2, y2) in frame pixels: A moves right, B moves left."""
    a = (40 + 8 * t, 60, 100 + 8 * t, 160)
    b = (560 - 8 * t, 300, 620 - 8 * t, 420)
    return [a, b]


def synthetic_frame(t):
    image = np.zeros((H, W, 3), np.uint8)
    for x1, y1, x2, y2 in truth(t):
        image[y1:y2, x1:x2] = 255
    return image


def synthetic_source(n=FRAMES, **options):
    frames = [(synthetic_frame(t), t / 10) for t in range(n)]
    reader = ListReader([f for f, _ in frames], **options)
    return Source(reader)


def export(model_path, out, *flags):
    result = run_cli("edge-opt", "export", model_path, "-t", "x86-fp32", "--format", "onnx",
                     "--runs", "3", "--out", out, "-q", *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / "x86-fp32"


_BUNDLES: dict[str, Path] = {}  # exported once per test session, shared with the CLI tests


def tiny_bundle(kind, tmp_path_factory, data_dir):
    """ "detect": the tiny detector exported through the real CLI (letterbox, pixels / 255,
    labels, calibration statistics); "classify": the tiny classifier."""
    if kind not in _BUNDLES:
        tmp = tmp_path_factory.mktemp(f"tiny_{kind}")
        if kind == "detect":
            (tmp / "labels.txt").write_text("box\n")
            _BUNDLES[kind] = export(
                tiny_detector(tmp / "det.onnx"), tmp / "out", "--task", "detect", "--decoder",
                "yolo-nms", "--resize", "letterbox", "--labels", tmp / "labels.txt",
                "--calib", data_dir / "calib",
            )  # fmt: skip
        else:
            _BUNDLES[kind] = export(tiny_classifier(tmp / "cls.onnx"), tmp / "out")
    return _BUNDLES[kind]


@pytest.fixture(scope="session")
def detector(detector_bundle):
    return edge_sdk.load(detector_bundle, threads=1)


def test_the_detector_sees_the_truth(detector):
    dets = detector.predict(synthetic_frame(5))
    order = np.argsort(dets.xyxy[:, 1])
    np.testing.assert_allclose(dets.xyxy[order], truth(5), atol=2.5)
    assert dets.labels == ("box", "box")


def test_file_frames_are_preprocessed_in_the_capture_thread(detector):
    """With a core the model's threads leave free (CI and devices have 2 or more)."""
    assert detector.manifest.runtime.threads == 1
    if usable_cores() < 2:
        pytest.skip("one core: the model's thread takes it, nothing is preprocessed ahead")
    results = list(edge_sdk.Pipeline(synthetic_source(8), detector))
    assert len(results) == 8 and all(r.frame.prepare_ms > 0 for r in results)
    assert all(r.frame.prepared is None for r in results)  # the tensors are not kept
    for r in results:  # the same answer as preprocessing on the inference thread
        expected = detector.predict(r.frame.image)
        np.testing.assert_array_equal(r.result.xyxy, expected.xyxy)
        np.testing.assert_array_equal(r.result.scores, expected.scores)

    threads = []

    def prepare(image):  # a Source's own prepare is kept
        threads.append(threading.current_thread().name)
        return detector.preprocess(image)

    source = synthetic_source(5)
    source.prepare = prepare
    results = list(edge_sdk.Pipeline(source, detector))
    assert threads == ["edge-capture"] * 5 and len(results) == 5


def test_a_model_on_every_core_preprocesses_on_the_inference_thread(detector_bundle):
    """Preprocessing ahead would preempt one of the model's threads mid-inference."""
    model = edge_sdk.load(detector_bundle, threads=usable_cores())
    results = list(edge_sdk.Pipeline(synthetic_source(5), model))
    assert len(results) == 5 and all(r.frame.prepare_ms == 0 for r in results)
    assert all(r.timings.preprocess_ms > 0 for r in results)


def test_tracked_detections_zones_and_lines_end_to_end(detector):
    seen = []
    pipeline = edge_sdk.Pipeline(
        synthetic_source(),
        detector,
        tracker="bytetrack",
        zones=ZONES,
        sinks=[CallbackSink(seen.append)],
        sink_policy="wait",
    )
    results = list(pipeline)

    assert [r.frame.index for r in results] == list(range(FRAMES))
    for t, r in enumerate(results):  # boxes are in frame pixels, whatever the letterbox did
        if len(r.result) == 2:
            order = np.argsort(r.result.xyxy[:, 1])
            np.testing.assert_allclose(r.result.xyxy[order], truth(t), atol=2.5)
    ids_a = {int(r.result.tracker_ids[np.argmin(r.result.xyxy[:, 1])]) for r in results[2:]}
    ids_b = {int(r.result.tracker_ids[np.argmax(r.result.xyxy[:, 1])]) for r in results[2:]}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b  # stable, distinct ids
    (a,), (b,) = ids_a, ids_b

    events = [e for r in results for e in r.events] + list(pipeline.final_events)
    kinds = [(e.kind, e.tracker_id) for e in events]
    assert kinds.count(("track_started", a)) == 1 and kinds.count(("track_started", b)) == 1
    assert ("zone_entered", a) in kinds and ("zone_left", b) in kinds  # A walks in, B out
    crossings = {e.tracker_id: e.direction for e in events if e.kind == "line_crossed"}
    assert set(crossings) == {a, b} and crossings[a] != crossings[b]
    entered_at = next(e.frame_index for e in events if e.kind == "zone_entered" and
                      e.tracker_id == a)  # fmt: skip
    assert (truth(entered_at)[0][0] + truth(entered_at)[0][2]) / 2 >= 320  # anchor inside
    assert (truth(entered_at - 1)[0][0] + truth(entered_at - 1)[0][2]) / 2 < 320
    assert {e.kind for e in pipeline.final_events} == {"track_ended", "zone_left"}

    assert len(seen) == FRAMES and seen[-1] is results[-1]  # the sink got every result
    m = pipeline.metrics()
    assert m.frames == FRAMES and m.source.frames_read == FRAMES
    assert m.events["line_crossed"] == 2 and m.events["track_ended"] == 2
    assert set(m.latency) >= {"queue", "preprocess", "infer", "decode", "post", "latency"}
    assert m.sinks[0].written == FRAMES and m.sinks[0].errors == 0
    assert m.drift.level == "drifted"  # black frames vs. calibration photos


class SleepySink(Sink):
    """A sink far slower than inference: 30 ms per result."""

    name = "sleepy"
    queue_size = 8  # a short queue: the end of the run need not wait for 64 x 30 ms

    def __init__(self):
        self.written = 0

    def write(self, result):
        time.sleep(0.03)
        self.written += 1


def test_a_sleeping_sink_does_not_slow_inference(detector):
    n = 150

    def fps(sinks):
        pipeline = edge_sdk.Pipeline(synthetic_source(n), detector, sinks=sinks)
        pipeline.run()
        return pipeline.metrics()

    fast = [fps([]), fps([])]
    sleepy_sink = SleepySink()
    slow = fps([sleepy_sink])
    baseline = max(m.fps for m in fast)
    # Without the drop policy, 150 results x 30 ms would cap the pipeline near 33 fps.
    assert slow.fps >= 0.5 * baseline, (slow.fps, baseline)
    assert slow.frames == n
    dropped = slow.dropped["sink sleepy"]
    assert dropped > 0 and sleepy_sink.written + dropped == n


def test_a_failing_sink_is_counted_and_the_loop_goes_on(detector):
    class Broken(Sink):
        name = "broken"

        def write(self, result):
            raise OSError("disk full")

    updates = []
    pipeline = edge_sdk.Pipeline(synthetic_source(12), detector, sinks=[Broken()],
                                 sink_policy="wait", on_status=updates.append)  # fmt: skip
    assert len(list(pipeline)) == 12
    stats = pipeline.metrics().sinks[0]
    assert stats.errors == 12 and stats.written == 0 and "disk full" in stats.last_error
    reported = [u for u in updates if u.stage == "sink broken"]
    assert [u.kind for u in reported] == ["error", "error"]  # the 1st and the 10th


def test_a_sink_that_cannot_open_is_skipped(detector):
    class NoOpen(CallbackSink):
        def open(self, info):
            raise PermissionError("no camera roll")

    pipeline = edge_sdk.Pipeline(synthetic_source(5), detector, sinks=[NoOpen(print, "x")])
    assert len(list(pipeline)) == 5
    assert pipeline.metrics().sinks[0].failed
    assert any(u.kind == "failed" for u in pipeline.status_log)


def test_a_source_that_raises_mid_stream_is_reopened_by_the_pipeline(detector):
    reader = ListReader([synthetic_frame(t) for t in range(20)], fail_at={7, 8})
    pipeline = edge_sdk.Pipeline(Source(reader, backoff=(0.01, 0.01)), detector,
                                 tracker="bytetrack")  # fmt: skip
    results = list(pipeline)
    assert [r.frame.index for r in results] == list(range(20))
    assert pipeline.metrics().source.reconnects == 2
    assert [u.kind for u in pipeline.status_log].count("reconnected") == 2


def test_background_run_and_stop_on_a_live_source(detector):
    base = [synthetic_frame(t) for t in range(FRAMES)]
    frames = [base[t % FRAMES] for t in range(100_000)]  # the same 45 arrays, repeated
    reader = ListReader(frames, live=True, delay=0.002)
    got = threading.Event()
    pipeline = edge_sdk.Pipeline(Source(reader), detector, tracker="bytetrack",
                                 sinks=[CallbackSink(lambda r: got.set())])  # fmt: skip
    pipeline.start()
    assert got.wait(10) and pipeline.running
    pipeline.stop()
    assert pipeline.join(5) and not pipeline.running
    m = pipeline.metrics()
    assert 0 < m.frames < 100_000 and m.source.ended


def test_breaking_out_of_the_loop_releases_the_source(detector):
    pipeline = edge_sdk.Pipeline(synthetic_source(), detector)
    for r in pipeline:
        if r.frame.index == 3:
            break
    assert not pipeline.running and pipeline.source.stats().ended


def test_max_frames(detector):
    pipeline = edge_sdk.Pipeline(synthetic_source(), detector, max_frames=7)
    assert pipeline.run().frames == 7


def test_classifier_pipeline_and_its_limits(classifier_bundle, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    results = list(edge_sdk.Pipeline(tmp_path, classifier_bundle))
    assert len(results) == 3 and all(len(r.result.class_ids) == 4 for r in results)
    assert results[0].to_dict()["source"].endswith("0.png")
    with pytest.raises(EdgeError, match="tracking needs a detection model"):
        edge_sdk.Pipeline(tmp_path, classifier_bundle, tracker="bytetrack")


def test_zones_need_a_tracker(detector):
    with pytest.raises(EdgeError, match="tracker="):
        edge_sdk.Pipeline(synthetic_source(), detector, zones=ZONES)


def test_sinks_and_sources_arguments_are_checked(detector):
    """`sinks=JsonlSink(...)` was a TypeError and `sources="a.jpg"` read the name letter by
    letter ("source w not found")."""
    seen = []
    edge_sdk.Pipeline(synthetic_source(), detector, max_frames=2,
                      sinks=CallbackSink(seen.append)).run()  # one sink alone is fine
    assert len(seen) == 2
    for sinks, words in ((5, "sinks must be a list of sinks, got int"),
                         (["out.jsonl"], "'out.jsonl' is not a sink")):
        with pytest.raises(EdgeError, match=words):
            edge_sdk.Pipeline(synthetic_source(), detector, sinks=sinks)
    with pytest.raises(EdgeError, match="sources takes a list"):
        edge_sdk.Pipeline(sources="a.jpg", model=detector)


def _png(seed):
    import cv2

    image = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()
