"""OpenVINO bundles under the multi-camera batcher's concurrent workers.

Compiled for LATENCY, concurrent infer calls take turns on one stream; `serve(N)` recompiles
for THROUGHPUT with N requests (parallel streams). Checked here: calls from 4 threads at once
give each frame exactly what serial calls give (YOLO11n, exported by `edge-opt export`, on
frames of the street clip), the backend reports and uses N requests when asked and goes back to
LATENCY for one caller, the compile cache still serves the recompiled model, the pipeline
(argument, manifest `runtime.workers`) tells the backend how many calls to expect, and
`edge-run --workers`.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import BackendError, EdgeError
from edge_sdk.multisource import MultiPipeline
from tests.conftest import DATA, ROOT, run_cli
from tests.edge_sdk.test_pipeline import synthetic_frame, tiny_detector, truth

CLIP = DATA / "vtest_short.avi"
YOLO = ROOT / "examples" / "models" / "yolo11n_person.onnx"
CALLERS = 4


def export_openvino(model: Path, out: Path, *flags) -> Path:
    result = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "--format", "openvino",
                     "--runs", "3", "-q", "--out", out, *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / "x86-fp32"


@pytest.fixture(scope="module")
def tiny_ov(tmp_path_factory) -> Path:
    """The tiny detector of test_pipeline (exact answers on synthetic frames) as OpenVINO IR."""
    tmp = tmp_path_factory.mktemp("tiny_ov")
    (tmp / "labels.txt").write_text("box\n")
    return export_openvino(tiny_detector(tmp / "det.onnx"), tmp / "out", "--task", "detect",
                           "--decoder", "yolo-nms", "--resize", "letterbox", "--labels",
                           tmp / "labels.txt")  # fmt: skip


@pytest.fixture(scope="module")
def yolo_ov(tmp_path_factory) -> Path:
    if not YOLO.is_file():
        pytest.skip(f"{YOLO.name} missing: `make {YOLO.relative_to(ROOT)}` fetches it")
    return export_openvino(YOLO, tmp_path_factory.mktemp("yolo_ov"))


def clip_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    out = []
    while len(out) < n:
        ok, image = cap.read()
        assert ok, f"{CLIP} has fewer than {n} frames"
        for _ in range(5):  # spread over the clip: people move between the frames used
            cap.grab()
        out.append(image)
    cap.release()
    return out


class InFlight:
    """Wraps a backend's `infer`, recording the most calls inside it at once."""

    def __init__(self, backend) -> None:
        self.backend, self.lock, self.now, self.most = backend, threading.Lock(), 0, 0

    def infer(self, feeds):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.backend.infer(feeds)
        finally:
            with self.lock:
                self.now -= 1


def concurrently(infer, feeds: list[dict], callers: int) -> list[list[np.ndarray]]:
    """Every frame's outputs, each of `callers` threads running every frame (a barrier
    before each frame, so the calls are in the runtime together); results per thread."""
    barrier = threading.Barrier(callers)
    results: list[list] = [[None] * len(feeds) for _ in range(callers)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(len(feeds)):
                barrier.wait(timeout=120)
                # each thread starts at a different frame, so frames meet other frames
                j = (i + t) % len(feeds)
                results[t][j] = infer(feeds[j])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_yolo_from_4_threads_at_once_gets_what_serial_calls_get(yolo_ov):
    model = edge_sdk.load(yolo_ov)
    images = clip_frames(6)
    feeds = [model.preprocess(image)[0] for image in images]
    latency = [model.backend.infer(f) for f in feeds]
    detections = [model.predict(image) for image in images]
    assert sum(len(d.xyxy) for d in detections) > 0  # the clip has pedestrians
    model.backend.serve(CALLERS)
    assert model.backend.hint == "THROUGHPUT" and model.backend.requests == CALLERS
    serial = [model.backend.infer(f) for f in feeds]
    counter = InFlight(model.backend)
    for _ in range(3):  # concurrency is what is under test: rerun if the OS serialised it
        per_thread = concurrently(counter.infer, feeds, CALLERS)
        if counter.most >= 2:
            break
    assert counter.most >= 2, "the calls never overlapped"
    for outputs in per_thread:
        for got, want in zip(outputs, serial):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)  # same streams, same kernels: bit for bit
    for got, want in zip(serial, latency):  # THROUGHPUT vs LATENCY: other thread splits
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    for image, want in zip(images, detections):  # and the decoded boxes are the same
        got = model.predict(image)
        assert got.labels == want.labels
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.5)


def test_the_backend_uses_n_requests_when_asked_and_latency_for_one(tiny_ov):
    model = edge_sdk.load(tiny_ov, threads=2)
    backend = model.backend
    assert (backend.hint, backend.requests, backend.streams) == ("LATENCY", 1, 1)
    assert "THROUGHPUT" not in backend.name
    backend.serve(3)
    assert backend.hint == "THROUGHPUT" and backend.requests == 3
    assert int(backend.compiled.get_property("PERFORMANCE_HINT_NUM_REQUESTS")) == 3
    assert 1 <= backend.streams <= 3 and "THROUGHPUT" in backend.name
    feeds = model.preprocess(synthetic_frame(4))[0]
    for outputs in concurrently(backend.infer, [feeds] * 2, 3):
        dets = model.decode(outputs[0], model.preprocess(synthetic_frame(4))[1])
        np.testing.assert_allclose(dets.xyxy[np.argsort(dets.xyxy[:, 1])], truth(4), atol=2.5)
    backend.serve(1)
    assert (backend.hint, backend.requests, backend.streams) == ("LATENCY", 1, 1)
    with pytest.raises(BackendError, match="integer >= 1"):
        backend.serve(0)


def test_the_compile_cache_serves_the_throughput_model_too(tiny_ov, tmp_path):
    cache = tmp_path / "cache"
    first = edge_sdk.load(tiny_ov, threads=2, cache_dir=cache)
    first.backend.serve(2)
    assert any(cache.iterdir())
    again = edge_sdk.load(tiny_ov, threads=2, cache_dir=cache)
    assert again.backend.compiled.get_property("LOADED_FROM_CACHE")
    again.backend.serve(2)
    assert again.backend.compiled.get_property("LOADED_FROM_CACHE")
    assert again.backend.hint == "THROUGHPUT"


def sources(n: int) -> list:
    from tests.edge_sdk.test_pipeline import synthetic_source

    return [synthetic_source(4) for _ in range(n)]


def test_the_pipeline_tells_the_backend_how_many_calls_to_expect(tiny_ov, tmp_path):
    model = edge_sdk.load(tiny_ov, threads=2)
    MultiPipeline(sources(3), model, workers=3)
    assert (model.backend.hint, model.backend.requests) == ("THROUGHPUT", 3)
    MultiPipeline(sources(2), model, workers=8)  # a source has one frame in the model at once
    assert model.backend.requests == 2
    MultiPipeline(sources(3), model, workers=1)  # one batch at a time: LATENCY as before
    assert (model.backend.hint, model.backend.requests) == ("LATENCY", 1)
    bundle = shutil.copytree(tiny_ov, tmp_path / "b")  # the manifest's own setting
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["runtime"]["workers"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    pinned = edge_sdk.load(bundle, threads=2)
    pipeline = MultiPipeline(sources(4), pinned)
    assert pipeline.workers == 2 and pinned.backend.requests == 2
    results = list(pipeline)
    assert len(results) == 16
    for r in results:  # each result went to its own source's frame
        order = np.argsort(r.result.xyxy[:, 1])
        np.testing.assert_allclose(r.result.xyxy[order], truth(r.frame.index), atol=2.5)
    assert MultiPipeline(sources(4), pinned, workers=1).workers == 1  # the argument wins
    with pytest.raises(EdgeError, match="workers must be an integer >= 1"):
        MultiPipeline(sources(2), model, workers=0)


def test_a_manifest_with_bad_workers_is_refused(tiny_ov, tmp_path):
    bundle = shutil.copytree(tiny_ov, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["runtime"]["workers"] = 0
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeError, match="runtime/workers"):
        edge_sdk.load(bundle)


def test_edge_run_workers_0_is_a_one_line_error(tiny_ov):
    result = run_cli("edge-run", tiny_ov, "--source", CLIP, "--source", CLIP, "--workers", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-run: error: --workers must be at "
                                                   "least 1"), result.stderr
    assert "Traceback" not in result.stderr


def test_edge_run_two_sources_with_2_workers(tiny_ov, tmp_path):
    out = tmp_path / "out.jsonl"
    result = run_cli("edge-run", tiny_ov, "--source", CLIP, "--source", CLIP,
                     "--workers", "2", "--max-frames", "5", "--jsonl", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 worker(s)" in result.stderr and "THROUGHPUT" in result.stderr, result.stderr
    for name in ("vtest_short", "vtest_short-2"):  # one file per source, named after it
        lines = (tmp_path / f"out.{name}.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if "frame" in r]  # not the end record
        assert [r["frame"] for r in records] == list(range(5)), records[:2]
        assert {r["source"] for r in records} == {name}
