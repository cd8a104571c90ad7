"""Images per second at batch 1 and at N, for bundles exported with `edge-opt export --batch N`.

Whether a batch pays depends on the runtime and the device: an accelerator usually gains,
a CPU often does not (benchmarks/results/batch_runtime.md). The report states what this host
measured instead of assuming: the bare model call, as the report's latency column, N calls on
one image each against one call on N images, on the held-out images (else random input), in
rounds interleaved so that other load on the host hits both alike; medians.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import edge_sdk
from optimize.measure import fit_input

ROUNDS = 3
MIN_SECONDS = 0.05  # per timed measurement


@dataclass(frozen=True)
class Throughput:
    batch: int
    threads: int
    rounds: int
    batch1_images_per_s: float  # N calls of one image
    batch_n_images_per_s: float  # one call of N images

    @property
    def gain(self) -> float:
        """How much faster per image a call on N is than N calls on one (1.0: no gain)."""
        return self.batch_n_images_per_s / self.batch1_images_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def measure_throughput(folder: Path, threads: int, batch: int, images=None,
                       progress=None) -> Throughput | None:
    """Batch 1 vs batch `batch` on the bundle in `folder`; None for a batch-1 export.
    `images`: an ImageSet of preprocessed float tensors (the report's held-out images)."""
    if batch <= 1:
        return None
    model = edge_sdk.load(folder, threads=threads, verify=False)
    spec = model.manifest.inputs[0]
    if images is not None and len(images):
        tensors = [fit_input(t, spec) for t in images.tensors]
    else:
        rng = np.random.default_rng(0)
        tensors = [rng.uniform(-1, 1, spec.shape).astype(spec.dtype)]
    frames = [tensors[i % len(tensors)] for i in range(batch)]
    stacked = np.concatenate(frames)
    infer = model.backend.infer

    reps = 1

    def one_by_one() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            for frame in frames:
                infer({spec.name: frame})
        return reps * batch / (time.perf_counter() - t0)

    def together() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            infer({spec.name: stacked})
        return reps * batch / (time.perf_counter() - t0)

    label = f"throughput at batch 1 and {batch}"
    with progress.stage(label) if progress is not None else contextlib.nullcontext():
        one_by_one(), together()  # first calls allocate
        # A tiny model's calls are too short to time one by one: repeat to >= MIN_SECONDS.
        reps = max(1, math.ceil(MIN_SECONDS * batch / one_by_one()))
        singles, batched = [], []
        for _ in range(ROUNDS):
            singles.append(one_by_one())
            batched.append(together())
    return Throughput(batch, threads, ROUNDS, statistics.median(singles),
                      statistics.median(batched))


def throughput_text(name: str, t: dict) -> str:
    """One report line: both figures and what they mean for running several cameras."""
    verdict = ("a batch pays here" if t["gain"] >= 1.1 else
               "batching gains nothing per image on this host: several cameras are better "
               "served by concurrent batch-1 calls (edge_sdk picks that on a CPU)")
    return (f"Throughput, {name}: {t['batch1_images_per_s']:.1f} images/s at batch 1, "
            f"{t['batch_n_images_per_s']:.1f} at batch {t['batch']} ({t['gain']:.2f}x; bare "
            f"model, {t['threads']} thread(s), median of {t['rounds']} interleaved rounds); "
            f"{verdict}.")


__all__ = ["Throughput", "measure_throughput", "throughput_text"]
