"""Measure a bundle with the same edge_sdk code a device runs: size, latency, agreement.

Latency is the bare model call (`Model.infer`) at batch 1 on preprocessed tensors; pre- and
post-processing are timed separately so the two are never confused.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import edge_sdk
from optimize.calibration import ImageSet


@dataclass(frozen=True)
class Metrics:
    size_bytes: int
    threads: int
    latency_ms_p50: float
    latency_ms_p95: float
    runs: int
    fidelity: dict | None  # vs the FP32 model on held-out images, in the task's terms
    eval_images: int
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


def host_threads(profile_threads: int) -> int:
    """The profile's thread count, capped at this host's cores (over-subscribing adds noise)."""
    return max(1, min(profile_threads, os.cpu_count() or 1))


def fit_input(tensor: np.ndarray, spec) -> np.ndarray:
    """A tensor preprocessed for the FP32 reference (float, its layout) as the bundle with
    input `spec` takes it: in its layout (TFLite is NHWC) and quantized if it takes integers."""
    if tensor.ndim == 4 and tuple(tensor.shape) != tuple(spec.shape):
        tensor = tensor.transpose((0, 2, 3, 1) if spec.layout == "NHWC" else (0, 3, 1, 2))
    if spec.quant is not None and tensor.dtype.kind == "f":
        scale, zero_point = spec.quant
        info = np.iinfo(spec.dtype)
        tensor = np.clip(np.rint(tensor / scale) + zero_point, info.min, info.max)
    return np.ascontiguousarray(tensor, dtype=spec.dtype)


def model_outputs(model: edge_sdk.Model, images: ImageSet) -> np.ndarray:
    """First output of the model for every image, stacked as float32."""
    spec = model.manifest.inputs[0]
    first = model.manifest.outputs[0].name
    return np.stack([np.asarray(model.infer({spec.name: fit_input(t, spec)})[first], np.float32)
                     for t in images.tensors])


def time_model(model: edge_sdk.Model, tensors: list[np.ndarray], runs: int, warmup: int = 5,
               progress=None) -> np.ndarray:
    """Per-call wall time in ms of `runs` calls, cycling through `tensors`."""
    spec = model.manifest.inputs[0]
    name = spec.name
    tensors = [fit_input(t, spec) for t in tensors]
    for i in range(warmup):
        model.infer({name: tensors[i % len(tensors)]})
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        model.infer({name: tensors[i % len(tensors)]})
        times[i] = (time.perf_counter() - start) * 1000
        if progress is not None:
            progress.update(1)
    return times


def time_interleaved(models: dict[str, edge_sdk.Model],
                     inputs: dict[str, list[np.ndarray]], rounds: int, runs: int,
                     warmup: int = 2) -> dict[str, list[float]]:
    """Per-call ms of every model, timed round by round in turn so the host's noise (a shared
    machine) hits all of them alike: compare them as ratios of these."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k] += time_model(m, inputs[k], runs, warmup=warmup).tolist()
    return times


def measure_bundle(folder: Path, threads: int, eval_images: ImageSet | None,
                   reference: list | None, runs: int = 50, progress=None) -> Metrics:
    """Size and latency; with FP32 `reference` outputs (optimize.fidelity.all_outputs) of
    `eval_images`, the task's fidelity figure too."""
    model = edge_sdk.load(folder, threads=threads)
    size = sum((folder / f.path).stat().st_size for k, f in model.manifest.files.items()
               if k != "labels")
    if eval_images is not None and len(eval_images):
        tensors = list(eval_images.tensors)
    else:
        spec = model.manifest.inputs[0]
        rng = np.random.default_rng(0)
        tensors = [rng.uniform(-1, 1, spec.shape).astype(spec.dtype)]
    times = time_model(model, tensors, runs, progress=progress)
    fidelity = None
    if reference is not None and eval_images is not None:
        from optimize.fidelity import judge

        fidelity = judge(model, eval_images, reference).to_dict()
    return Metrics(
        size_bytes=size,
        threads=threads,
        latency_ms_p50=float(np.percentile(times, 50)),
        latency_ms_p95=float(np.percentile(times, 95)),
        runs=runs,
        fidelity=fidelity,
        eval_images=0 if eval_images is None else len(eval_images),
        backend=model.backend.name,
    )
