"""Dynamic batching: several sources share one model, one call per batch of frames.

Each source has a `Lane` holding at most one frame (per-source backpressure: a batch takes at
most one frame per source, so a fast camera cannot crowd out the others). A live source's lane
keeps only its newest frame (the older one is dropped and counted); a file source's feeder
reads its next frame once the previous one's result is out (`done`), so frames do not age
behind the batch being computed. `Gatherer.next_batch` takes the frames of the ready lanes,
up to `max_batch`, in turn (round robin), and waits at most `max_wait_ms` after the oldest
ready frame for the lanes still reading: one stalled source delays a batch by `max_wait_ms`,
never more (counted from the later of that frame's arrival and the call to `next_batch`).
`run_batch` preprocesses each frame, stacks them, calls the model once and decodes each
frame's slice with its own transform; a bundle without a batch dimension (`max_batch` 1) is
called once per frame through the same path.

Several inference workers may take batches at once (`Gatherer(limits, workers)`): the model
is loaded once and called concurrently. On a CPU that is what pays, not batching (a call on
N images costs as much per image as N calls on one; `auto_workers`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import EdgeError
from edge_sdk.manifest import Manifest
from edge_sdk.model import Model, Result
from edge_sdk.sources import VideoFrame

DEFAULT_MAX_WAIT_MS = 10.0  # a camera at 30 fps delivers every 33 ms: wait a third of that
# On a CPU a call on N images costs as much per image as N calls on one, or more, while
# concurrent calls on the one loaded model fill the cores at least as well
# (benchmarks/results/batch_runtime.md: onnxruntime batch 4 0.80-0.93x batch 1, 4 concurrent
# batch-1 calls 0.99-1.15x; 8 cameras: 59-60 CPU ms/frame with 8 workers, 63-65 with 4): there
# the batcher runs up to this many calls at once, each on its share of the sources. Each call
# in flight holds its own activations, so the cap bounds memory (~40 MB each for YOLO11n).
CPU_WORKERS = 8
ACCELERATOR_WORKERS = 2  # one batch in the device while the next is gathered and prepared


def auto_workers(model: Model, sources: int) -> int:
    """How many batches to have in the model at once: CPU runtimes gain from concurrent
    calls, not from batching; an accelerator (a GPU provider in use) from full batches, with
    a second batch prepared while one runs."""
    providers = getattr(model.backend, "providers", None) or ["CPUExecutionProvider"]
    accelerated = any(p != "CPUExecutionProvider" for p in providers)
    return max(1, min(sources, ACCELERATOR_WORKERS if accelerated else CPU_WORKERS))


def resolve_workers(model: Model, sources: int, workers: int | None = None) -> int:
    """`workers` if given, else the manifest's `runtime.workers` (a device profile that knows
    its hardware), else `auto_workers`; never more than there are sources from the manifest
    (a source has one frame in the model at a time, so more would idle)."""
    if workers is None and model.manifest.runtime.workers is not None:
        workers = min(model.manifest.runtime.workers, max(1, sources))
    if workers is None:
        return auto_workers(model, sources)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise EdgeError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int  # frames per model call
    max_wait_ms: float  # how long a batch waits for sources still reading


def batch_limits(manifest: Manifest, max_batch: int | None = None,
                 max_wait_ms: float | None = None) -> BatchLimits:
    """The manifest's runtime settings, overridable; a batch-1 bundle cannot be batched."""
    capacity = manifest.runtime.max_batch
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise EdgeError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if max_batch > capacity:
            raise EdgeError(
                f"max_batch {max_batch} is more than this bundle takes ({capacity}); re-export "
                f"it with `edge-opt export --batch {max_batch}` or ask for at most {capacity} "
                f"(edge-run --max-batch, Pipeline(max_batch=...))")
        capacity = max_batch
    wait = manifest.runtime.max_wait_ms if max_wait_ms is None else max_wait_ms
    wait = DEFAULT_MAX_WAIT_MS if wait is None else wait
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1000:
        raise EdgeError(f"max_wait_ms must be a number from 0 to 1000, got {wait!r}")
    return BatchLimits(capacity, 0.0 if capacity == 1 else float(wait))


@dataclass(frozen=True)
class Pending:
    """A frame taken from a lane into a batch."""

    key: Hashable  # which source
    frame: VideoFrame
    arrived: float  # perf_counter when the frame reached its lane
    taken: float  # perf_counter when the batch was formed


class _Lane:
    def __init__(self, live: bool) -> None:
        self.live = live
        self.frame: VideoFrame | None = None
        self.arrived = 0.0
        self.ended = False
        self.busy = False  # its last frame was taken and its result is not out yet
        self.dropped = 0  # live frames replaced by a newer one before a batch took them


class Gatherer:
    """Lanes in front of the model; feeders `offer`, inference workers take batches.

    With `workers` > 1 several batches are in the model at once (one model, concurrent
    calls): each batch then takes at most its share of the open lanes (N sources, K workers:
    ceil(N / K), never more than max_batch), so the others find frames to work on. A lane
    whose frame is in a batch is not taken again until `done`: a source's frames reach its
    tracker in order, one at a time.
    """

    def __init__(self, limits: BatchLimits, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise EdgeError(f"workers must be an integer >= 1, got {workers!r}")
        self.limits = limits
        self.workers = workers
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, _Lane] = {}
        self._order: list[Hashable] = []
        self._next = 0  # round robin: where the next batch starts looking
        self._closed = False

    def add_lane(self, key: Hashable, live: bool) -> None:
        with self._cond:
            if key in self._lanes:
                raise EdgeError(f"source {key!r} is given twice; give each source its own name")
            self._lanes[key] = _Lane(live)
            self._order.append(key)

    def offer(self, key: Hashable, frame: VideoFrame) -> bool:
        """Hand a frame to its lane. A live lane replaces an untaken frame (counted); a file
        lane waits until the previous one was taken and its result is out. False once
        closed."""
        with self._cond:
            lane = self._lanes[key]
            if not lane.live:
                self._cond.wait_for(lambda: self._free(lane) or lane.ended or self._closed)
            if self._closed or lane.ended:
                return False
            if lane.frame is not None:
                lane.dropped += 1
            lane.frame, lane.arrived = frame, time.perf_counter()
            self._cond.notify_all()
            return True

    def wait_free(self, key: Hashable, timeout: float | None = None) -> bool:
        """Block until the lane is empty and its last frame's result is out: a file feeder
        reads its next frame only then, so the frame does not age for a whole batch behind
        the one being computed (the read is short next to a model call). False once
        closed or on timeout."""
        with self._cond:
            lane = self._lanes[key]
            self._cond.wait_for(lambda: self._free(lane) or lane.ended or self._closed, timeout)
            return not self._closed and not lane.ended and self._free(lane)

    def idle(self, key: Hashable) -> bool:
        """The lane waits for its next frame (none untaken, none in the model): a frame
        offered now will be taken, not replaced by a newer one."""
        with self._cond:
            return self._free(self._lanes[key])

    def done(self, key: Hashable) -> None:
        """The result of this lane's last taken frame has been handed on."""
        with self._cond:
            self._lanes[key].busy = False
            self._cond.notify_all()

    @staticmethod
    def _free(lane: _Lane) -> bool:
        return lane.frame is None and not lane.busy

    def end(self, key: Hashable) -> None:
        """This source has no more frames (a frame still waiting is kept and processed)."""
        with self._cond:
            self._lanes[key].ended = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop: waiting feeders and `next_batch` return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def dropped(self, key: Hashable) -> int:
        with self._cond:
            return self._lanes[key].dropped

    def next_batch(self, timeout: float | None = None) -> list[Pending] | None:
        """Up to max_batch frames, one per ready lane; [] on timeout; None when every lane
        has ended and is empty (or after close)."""
        started = time.perf_counter()
        limit = started + timeout if timeout is not None else None
        with self._cond:
            while True:
                if self._closed or self._finished():
                    return None
                ready = self._ready()
                if ready:
                    break
                remaining = None if limit is None else limit - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            # Stragglers get max_wait_ms from the later of the oldest ready frame and this
            # call: frames that waited through the last model call do not make it a zero
            # wait, which would split batches in two and keep them split.
            oldest = min(self._lanes[k].arrived for k in ready)
            deadline = max(oldest, started) + self.limits.max_wait_ms / 1e3
            while not self._closed:
                ready = self._ready()
                cap = self._cap()
                wanted = min(cap, self._open_count(free=True))
                remaining = deadline - time.perf_counter()
                if len(ready) >= wanted or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(ready, cap)

    def _finished(self) -> bool:
        return all(lane.ended and lane.frame is None for lane in self._lanes.values())

    def _ready(self) -> list[Hashable]:
        """Lanes holding a frame and none in a batch, in round-robin order from `_next`."""
        n = len(self._order)
        keys = (self._order[(self._next + i) % n] for i in range(n))
        return [k for k in keys if self._lanes[k].frame is not None and not self._lanes[k].busy]

    def _open_count(self, free: bool = False) -> int:
        """Lanes that have, or may still get, a frame (`free`: and have none in a batch)."""
        return sum(1 for lane in self._lanes.values()
                   if (lane.frame is not None or not lane.ended) and not (free and lane.busy))

    def _cap(self) -> int:
        """This batch's share: all of max_batch for one worker, else ceil(open / workers)."""
        if self.workers == 1:
            return self.limits.max_batch
        share = -(-self._open_count() // self.workers)
        return max(1, min(self.limits.max_batch, share))

    def _take(self, ready: list[Hashable], cap: int) -> list[Pending]:
        now = time.perf_counter()
        batch = []
        for key in ready[:cap]:
            lane = self._lanes[key]
            batch.append(Pending(key, lane.frame, lane.arrived, now))
            lane.frame, lane.busy = None, True
        if batch:
            self._next = (self._order.index(batch[-1].key) + 1) % len(self._order)
        self._cond.notify_all()  # file feeders waiting for their lane
        return batch


@dataclass(frozen=True)
class Decoded:
    """One frame's result from a batch call, with what it cost."""

    result: Result
    preprocess_ms: float  # this frame
    infer_ms: float  # the whole model call its batch shared
    decode_ms: float  # this frame
    batch_size: int


class BatchBuffer:
    """Input arrays kept from one call to the next (one per inference worker): frames are
    copied into a slice of them instead of a fresh np.concatenate allocation per call
    (a batch of four 640x640 float frames is 20 MB of new pages every call otherwise)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def stack(self, per_frame: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        n = len(per_frame)
        out = {}
        for key, first in per_frame[0].items():
            shape = (n, *first.shape[1:])
            array = self._arrays.get(key)
            if array is None or array.shape[1:] != shape[1:] or array.dtype != first.dtype \
                    or array.shape[0] < n:
                array = self._arrays[key] = np.empty(shape, first.dtype)
            view = array[:n]
            for i, feeds in enumerate(per_frame):
                view[i] = feeds[key][0]
            out[key] = view
        return out


def run_batch(model: Model, frames: Sequence[np.ndarray | VideoFrame], max_batch: int,
              buffer: BatchBuffer | None = None) -> list[Decoded]:
    """Preprocess each frame (unless its feeder did: `VideoFrame.prepared`), run the model on
    up to `max_batch` at a time, decode each. `buffer`: the calling worker's own, reused
    across calls (never shared between threads)."""
    out: list[Decoded] = []
    for start in range(0, len(frames), max_batch):
        out.extend(_one_call(model, frames[start : start + max_batch], buffer))
    return out


def _one_call(model: Model, frames: Sequence[np.ndarray | VideoFrame],
              buffer: BatchBuffer | None) -> list[Decoded]:
    per_frame, transforms, pre_ms = [], [], []
    for item in frames:
        feeds, transform, ms = model.preprocess_frame(item)
        per_frame.append(feeds)
        transforms.append(transform)
        pre_ms.append(ms)
    n = len(frames)
    if n == 1:
        batch = per_frame[0]
    elif buffer is not None:
        batch = buffer.stack(per_frame)
    else:  # every input the model takes, stacked
        batch = {key: np.concatenate([feeds[key] for feeds in per_frame]) for key in per_frame[0]}
    t0 = time.perf_counter()
    outputs = model.backend.infer(batch)
    infer_ms = (time.perf_counter() - t0) * 1e3
    for spec, array in zip(model.manifest.outputs, outputs):
        if array.ndim == 0 or array.shape[0] != n:
            raise EdgeError(f"output {spec.name!r} has shape {list(array.shape)} for a batch of "
                            f"{n}: its first dimension must be the batch; re-export the bundle "
                            "with max_batch 1")
    decoded = []
    for i, transform in enumerate(transforms):
        t0 = time.perf_counter()
        result = model.decode([array[i : i + 1] for array in outputs], transform)
        decoded.append(Decoded(result, pre_ms[i], infer_ms, (time.perf_counter() - t0) * 1e3, n))
    return decoded


__all__ = ["BatchBuffer", "BatchLimits", "Decoded", "Gatherer", "Pending", "auto_workers",
           "batch_limits", "resolve_workers", "run_batch"]
