"""The dynamic batcher: lanes, gathering, max_wait_ms, backpressure, and one model call per
batch on a real (tiny, batch-dynamic) detector whose answers are known exactly."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

import edge_sdk
from edge_sdk.batcher import BatchLimits, Gatherer, batch_limits, run_batch
from edge_sdk.errors import EdgeError
from edge_sdk.sources import VideoFrame
from tests.edge_sdk.batched_bundle import frame
from tests.edge_sdk.test_pipeline import synthetic_frame, truth


def test_one_model_call_decodes_each_frame_with_its_own_transform(batched):
    times = (1, 9, 23, 40)
    # different frame sizes in one batch: each result is mapped back through its own letterbox
    images = [synthetic_frame(t) for t in times]
    images[2] = cv2.resize(images[2], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    out = run_batch(batched, images, max_batch=4)
    assert [d.batch_size for d in out] == [4, 4, 4, 4]
    for t, d, scale in zip(times, out, (1, 1, 2, 1)):
        order = np.argsort(d.result.xyxy[:, 1])
        np.testing.assert_allclose(d.result.xyxy[order], np.array(truth(t)) * scale, atol=5)
    # more frames than max_batch: split into calls of at most max_batch
    assert [d.batch_size for d in run_batch(batched, images + images[:1], 4)] == [4] * 4 + [1]


def test_frames_prepared_by_their_feeder_are_not_preprocessed_again(batched):
    # prepared from another scene than .image: the result shows which one the model saw
    frames = [VideoFrame(synthetic_frame(1), 0, 0.0, 0.0, "a", batched.preprocess(
        synthetic_frame(30)), 0.5), VideoFrame(synthetic_frame(12), 0, 0.0, 0.0, "b")]
    out = run_batch(batched, frames, max_batch=4)
    for d, t in zip(out, (30, 12)):
        np.testing.assert_allclose(d.result.xyxy[np.argsort(d.result.xyxy[:, 1])], truth(t),
                                   atol=2.5)
    assert out[0].preprocess_ms == 0.5 and out[0].batch_size == 2


def test_a_batch_1_bundle_is_called_frame_by_frame(detector_bundle):
    model = edge_sdk.load(detector_bundle, threads=1)
    assert batch_limits(model.manifest) == BatchLimits(1, 0.0)
    out = run_batch(model, [synthetic_frame(3), synthetic_frame(30)], max_batch=1)
    assert [d.batch_size for d in out] == [1, 1]
    np.testing.assert_allclose(out[1].result.xyxy[np.argsort(out[1].result.xyxy[:, 1])],
                               truth(30), atol=2.5)
    with pytest.raises(EdgeError, match=r"more than this bundle takes.*Pipeline\(max_batch="):
        batch_limits(model.manifest, max_batch=4)  # a Python caller is told its own argument


def test_limits_come_from_the_manifest_and_can_be_overridden(batched):
    assert batch_limits(batched.manifest).max_batch == 4
    assert batch_limits(batched.manifest, max_batch=2, max_wait_ms=5) == BatchLimits(2, 5.0)
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1}, {"max_wait_ms": 5000}):
        with pytest.raises(EdgeError):
            batch_limits(batched.manifest, **bad)


def test_a_batch_takes_one_frame_per_ready_source_in_turn():
    g = Gatherer(BatchLimits(max_batch=2, max_wait_ms=0))
    for key in "abc":
        g.add_lane(key, live=True)
    for key in "abc":
        assert g.offer(key, frame(0, key))
    first = g.next_batch()
    assert [p.key for p in first] == ["a", "b"]
    for key in "ab":
        g.done(key)  # results out: a and b may be taken again
        g.offer(key, frame(1, key))
    second = g.next_batch()
    assert [p.key for p in second] == ["c", "a"]  # c waited longest: its turn comes first
    assert all(p.frame.source == p.key for p in first + second)


def test_a_live_lane_keeps_only_its_newest_frame():
    g = Gatherer(BatchLimits(4, 0))
    g.add_lane("fast", live=True)
    g.add_lane("slow", live=True)
    for i in range(5):
        g.offer("fast", frame(i, "fast"))
    g.offer("slow", frame(0, "slow"))
    batch = g.next_batch()
    assert [(p.key, p.frame.index) for p in batch] == [("fast", 4), ("slow", 0)]
    assert g.dropped("fast") == 4 and g.dropped("slow") == 0


def test_a_file_lane_makes_its_feeder_wait_until_its_frame_is_done():
    g = Gatherer(BatchLimits(2, 0))
    g.add_lane("file", live=False)
    assert g.offer("file", frame(0))
    second_in = threading.Event()
    t = threading.Thread(target=lambda: (g.offer("file", frame(1)), second_in.set()))
    t.start()
    assert not second_in.wait(0.2)  # blocked: the lane still holds frame 0
    assert [p.frame.index for p in g.next_batch()] == [0]
    assert not second_in.wait(0.2)  # still blocked: frame 0's result is not out yet
    g.done("file")
    assert second_in.wait(5)
    assert [p.frame.index for p in g.next_batch()] == [1]
    t.join()


def test_the_batcher_waits_at_most_max_wait_ms_for_a_stalled_source():
    g = Gatherer(BatchLimits(4, max_wait_ms=150))
    g.add_lane("ok", live=True)
    g.add_lane("stalled", live=True)  # open, but never delivers
    g.offer("ok", frame(0, "ok"))
    t0 = time.perf_counter()
    batch = g.next_batch(timeout=5)
    waited = time.perf_counter() - t0
    assert [p.key for p in batch] == ["ok"]
    assert waited >= 0.14  # it did wait for the straggler, up to its deadline
    assert batch[0].taken - batch[0].arrived >= 0.149


def test_no_wait_when_every_open_source_is_ready():
    """An hour of max_wait_ms: a batcher that sat it out would never answer within the test."""
    g = Gatherer(BatchLimits(4, max_wait_ms=3_600_000))
    for key in "ab":
        g.add_lane(key, live=False)
        g.offer(key, frame(0, key))
    g.add_lane("gone", live=True)
    g.end("gone")
    got = []
    worker = threading.Thread(target=lambda: got.append(g.next_batch(timeout=5)), daemon=True)
    worker.start()
    worker.join(120)
    g.close()
    assert got and len(got[0]) == 2


def test_ended_lanes_finish_the_stream_after_their_last_frame():
    g = Gatherer(BatchLimits(4, 0))
    g.add_lane("a", live=False)
    g.offer("a", frame(7, "a"))
    g.end("a")
    assert [p.frame.index for p in g.next_batch()] == [7]
    assert g.next_batch() is None
    assert not g.offer("a", frame(8, "a"))


def test_close_releases_waiting_feeders_and_the_batch_loop():
    g = Gatherer(BatchLimits(4, 0))
    g.add_lane("a", live=False)
    g.offer("a", frame(0))
    results = []
    feeder = threading.Thread(target=lambda: results.append(g.offer("a", frame(1))))
    feeder.start()
    g.close()
    feeder.join(5)
    assert results == [False] and g.next_batch() is None


def test_a_source_given_twice_is_refused():
    g = Gatherer(BatchLimits(1, 0))
    g.add_lane("a", live=False)
    with pytest.raises(EdgeError, match="twice"):
        g.add_lane("a", live=True)
