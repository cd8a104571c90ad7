"""Several batches in the model at once (`workers`): each source's frames still reach its own
tracker in order, one at a time; each batch takes its share of the sources; stragglers get
max_wait_ms from when the batch is asked for; errors and early exits end every worker."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import edge_sdk
from edge_sdk.batcher import BatchBuffer, BatchLimits, Gatherer, auto_workers, run_batch
from edge_sdk.errors import BackendError, EdgeError
from edge_sdk.multisource import MultiPipeline, StreamSpec
from tests.edge_sdk.batched_bundle import frame
from tests.edge_sdk.test_multisource import OFFSETS, assert_truth, scene
from tests.edge_sdk.test_pipeline import synthetic_frame


class CountingBackend:
    """The real backend, counting how many calls are in it at once (and failing on demand)."""

    def __init__(self, backend, fail_on: int | None = None) -> None:
        self.backend, self.fail_on = backend, fail_on
        self.providers = getattr(backend, "providers", None)
        self.name = backend.name
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def infer(self, feeds):
        with self.lock:
            self.calls += 1
            self.now += 1
            self.most = max(self.most, self.now)
            call = self.calls
        try:
            if call == self.fail_on:
                raise BackendError("the runtime failed (test)")
            return self.backend.infer(feeds)
        finally:
            with self.lock:
                self.now -= 1


def counted(model, fail_on=None):
    return edge_sdk.Model(model.folder, model.manifest, CountingBackend(model.backend, fail_on))


def test_a_lane_in_a_batch_is_not_taken_again_until_its_result_is_out():
    g = Gatherer(BatchLimits(4, 0), workers=2)
    g.add_lane("cam", live=True)
    g.offer("cam", frame(0, "cam"))
    assert [p.frame.index for p in g.next_batch()] == [0]
    g.offer("cam", frame(1, "cam"))  # a live camera keeps delivering meanwhile
    assert g.next_batch(timeout=0.2) == []  # frame 1 waits: frame 0 is still in the model
    g.done("cam")
    assert [p.frame.index for p in g.next_batch()] == [1]


def test_each_batch_takes_its_share_of_the_sources():
    g = Gatherer(BatchLimits(max_batch=4, max_wait_ms=0), workers=2)
    for key in "abcd":
        g.add_lane(key, live=True)
        g.offer(key, frame(0, key))
    first, second = g.next_batch(), g.next_batch()
    assert [p.key for p in first] == ["a", "b"] and [p.key for p in second] == ["c", "d"]
    one = Gatherer(BatchLimits(max_batch=4, max_wait_ms=0), workers=1)
    for key in "abcd":
        one.add_lane(key, live=True)
        one.offer(key, frame(0, key))
    assert [p.key for p in one.next_batch()] == list("abcd")


def test_a_frame_that_waited_through_the_last_call_still_waits_for_stragglers():
    """Its own arrival is long past max_wait_ms; the batch still gives the other source
    max_wait_ms from when it is asked for, so batches do not split in two for good."""
    g = Gatherer(BatchLimits(2, max_wait_ms=1000))
    for key in "ab":
        g.add_lane(key, live=True)
    g.offer("a", frame(0, "a"))
    g._lanes["a"].arrived -= 10.0  # a arrived 10 s ago, while the last batch was in the model
    got = []
    worker = threading.Thread(target=lambda: got.append(g.next_batch(timeout=30)))
    worker.start()
    g.offer("b", frame(0, "b"))
    worker.join(30)
    assert [p.key for p in got[0]] == ["a", "b"]


def test_workers_keep_every_source_in_order_with_its_own_tracker(batched):
    model = counted(batched)
    specs = [StreamSpec(scene(off, 12), name=k) for k, off in OFFSETS.items()]
    pipeline = edge_sdk.Pipeline(sources=specs, model=model, tracker="bytetrack", workers=2,
                                 sink_policy="wait")  # fmt: skip
    assert isinstance(pipeline, MultiPipeline) and pipeline.workers == 2
    results = list(pipeline)
    assert len(results) == 36
    assert max(r.batch_size for r in results) <= 2  # three sources over two workers
    assert model.backend.most <= 2
    for k in OFFSETS:
        mine = [r for r in results if r.name == k]
        assert [r.frame.index for r in mine] == list(range(12))
        for r in mine:
            assert_truth(r, OFFSETS[k])
        assert sorted(set(mine[-1].result.tracker_ids)) == [1, 2]


def test_a_failing_model_call_ends_the_run_with_its_error(batched):
    specs = [StreamSpec(scene(off, 30), name=k) for k, off in OFFSETS.items()]
    pipeline = edge_sdk.Pipeline(sources=specs, model=counted(batched, fail_on=3), workers=2)
    with pytest.raises(BackendError, match="test"):
        list(pipeline)
    assert not pipeline.running


def test_stopping_early_ends_the_workers_and_sources(batched):
    specs = [StreamSpec(scene(off, 40), name=k) for k, off in OFFSETS.items()]
    pipeline = edge_sdk.Pipeline(sources=specs, model=batched, workers=3)
    for n, _ in enumerate(pipeline, 1):
        if n == 5:
            break
    pipeline.stop()
    assert not pipeline.running
    assert not [t for t in threading.enumerate() if t.name.startswith("edge-batch-")]


def test_default_workers_follow_the_runtime(batched):
    assert auto_workers(batched, 1) == 1
    assert auto_workers(batched, 3) == 3  # CPU: concurrent calls
    assert auto_workers(batched, 16) == 8  # capped: each call in flight holds activations
    gpu = SimpleNamespace(backend=SimpleNamespace(
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert auto_workers(gpu, 16) == 2  # accelerator: full batches, one prepared ahead


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_workers_value_is_one_clear_error(batched, bad):
    with pytest.raises(EdgeError, match="workers must be an integer >= 1"):
        edge_sdk.Pipeline(sources=[scene(0, 2), scene(10, 2)], model=batched, workers=bad)


def test_the_reused_batch_buffer_gives_the_same_results(batched):
    images = [synthetic_frame(t) for t in (0, 7, 13)]
    buffer = BatchBuffer()
    fresh = run_batch(batched, images, 4)
    reused = run_batch(batched, images, 4, buffer)
    again = run_batch(batched, images[:2], 4, buffer)
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a.result.xyxy, b.result.xyxy)
    np.testing.assert_array_equal(again[1].result.xyxy, fresh[1].result.xyxy)
    assert len(buffer._arrays) == 1
