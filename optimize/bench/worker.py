"""One bundle measured in a process of its own (started by memory.run_worker).

    python -m optimize.bench.worker JOB.json

Imports only what a device process would (edge_sdk, numpy, OpenCV, the runtime), loads the
bundle, times `Model.infer` at batch 1, then runs every image through preprocess -> infer ->
decode, timing preprocess and decode on their own, and keeps what accuracy needs: what the
labels are scored on (`keep`: a classifier's 5 best classes, or decoded boxes) and, when there
is an FP32 reference, every image's raw outputs written to `outputs/<i>.npz`, which the
parent scores with the task's own fidelity function (the export guard's yardstick). Images
are read one at a time and outputs go to disk, so the peak memory is the runtime's and the
model's, not the data set's.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def measure(job: dict) -> tuple[dict, dict[str, np.ndarray]]:

    import edge_sdk
    from edge_sdk.errors import InputError, ProviderWarning
    from edge_sdk.images import read_image
    from optimize.bench.accuracy import ranked
    from optimize.bench.memory import current_rss_bytes, peak_rss_bytes
    from optimize.measure import time_model
    from optimize.progress import Progress

    baseline = current_rss_bytes()
    # The build host measures Jetson bundles on its CPU on purpose (reports say so).
    warnings.filterwarnings("ignore", category=ProviderWarning)
    started = time.perf_counter()
    model = edge_sdk.load(job["bundle"], threads=job["threads"],
                          trust_code=job.get("trust_code", False),
                          cache_dir=job.get("cache_dir"))
    load_ms = (time.perf_counter() - started) * 1000
    loaded = current_rss_bytes()
    name = model.manifest.inputs[0].name
    output_names = [o.name for o in model.manifest.outputs]
    first = output_names[0]
    keep = job.get("keep")  # "ranked", "boxes" or None: what the labels are scored on
    outputs_dir = Path(job["outputs"]) if job.get("outputs") else None
    if outputs_dir is not None:
        outputs_dir.mkdir(parents=True, exist_ok=True)
    paths = job["images"]
    with Progress(job["progress"]).bar(job["runs"] + len(paths),
                                       f"measuring {job['label']}") as bar:
        tensors = []
        for path in paths:
            frame = read_image(path)
            if frame is not None:
                if not tensors:  # start-up ends with the first image's result
                    t0 = time.perf_counter()
                    model.predict(frame)
                    startup_ms = load_ms + (time.perf_counter() - t0) * 1000
                tensors.append(model.preprocess(frame)[0][name])
            if len(tensors) >= job["timing_images"]:
                break
        if not tensors:
            raise InputError(f"none of the {len(paths)} images could be read; they may be "
                             "corrupt or not images")
        latency = time_model(model, tensors, job["runs"], job["warmup"], progress=bar)
        del tensors
        ok = np.zeros(len(paths), bool)
        sizes = np.zeros((len(paths), 2), np.int64)  # height, width
        pre_ms, post_ms, top = [], [], []
        boxes, scores, classes, image_index = [], [], [], []
        for i, path in enumerate(paths):
            bar.update(1)
            frame = read_image(path)
            if frame is None:
                continue
            ok[i] = True
            sizes[i] = frame.shape[:2]
            t0 = time.perf_counter()
            feeds, transform = model.preprocess(frame)
            t1 = time.perf_counter()
            outputs = model.infer(feeds)
            t2 = time.perf_counter()
            result = model.decode(list(outputs.values()), transform)
            t3 = time.perf_counter()
            pre_ms.append((t1 - t0) * 1000)
            post_ms.append((t3 - t2) * 1000)
            if outputs_dir is not None:
                np.savez(outputs_dir / f"{i}.npz", *[np.asarray(outputs[n], np.float32)
                                                      for n in output_names])
            if keep == "ranked":
                top.append(ranked(np.asarray(outputs[first]).reshape(1, -1))[0])
            elif keep == "boxes" and isinstance(result, edge_sdk.Detections):
                boxes.append(result.xyxy)
                scores.append(result.scores)
                classes.append(result.class_ids)
                image_index.append(np.full(len(result), i, np.int64))
    stats = {
        "backend": model.backend.name,
        "threads": model.manifest.runtime.threads,
        "latency_ms": latency.tolist(),
        "load_ms": load_ms,
        "startup_ms": startup_ms,  # load + the first image's predict (reading it aside)
        "pre_ms": pre_ms,
        "post_ms": post_ms,
        "rss_baseline_bytes": baseline,
        "rss_after_load_bytes": loaded,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    arrays = {"ok": ok, "sizes": sizes}
    if keep == "ranked":
        arrays["ranked"] = np.stack(top) if top else np.zeros((0, 1), np.int32)
    elif keep == "boxes":
        arrays["boxes"] = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        arrays["scores"] = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        arrays["classes"] = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        arrays["image_index"] = (np.concatenate(image_index) if image_index
                                 else np.zeros(0, np.int64))
    return stats, arrays


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    try:
        stats, arrays = measure(job)
    except Exception as exc:  # every failure goes back to the parent as one line
        from edge_sdk.errors import EdgeError

        message = str(exc) if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
        Path(job["result"]).write_text(json.dumps({"error": message}))
        return 1
    np.savez(job["arrays"], **arrays)
    Path(job["result"]).write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
