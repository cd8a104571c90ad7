"""One Model shared by threads (several sources, one pipeline per camera): 4 threads calling
`infer` / `predict` at once get exactly what serial calls get, on every backend."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import edge_sdk
from edge_sdk.manifest import InputSpec, OutputSpec
from tests.edge_sdk.bundles import write_bundle
from tests.edge_sdk.test_litert_backend import _bundle, _tensor, _tflite, schema

THREADS, ROUNDS = 4, 40
LITERT_SHAPE = (1, 96, 96, 3)


def _litert_model(folder):
    """x (1, 96, 96, 3) -> RELU -> y: big enough that invoke lets other threads run."""
    model = _tflite([_tensor("x", "float32", shape=LITERT_SHAPE),
                     _tensor("y", "float32", shape=LITERT_SHAPE)],
                    [(schema.BuiltinOperator.RELU, [0], [1])], [0], [1])
    spec = InputSpec("x", LITERT_SHAPE, layout="NHWC", color="RGB")
    return edge_sdk.load(_bundle(folder, model, (spec,), (OutputSpec("y", LITERT_SHAPE),),
                                 threads=1))


def _load(backend: str, folder):
    if backend == "litert":
        return _litert_model(folder)
    return edge_sdk.load(write_bundle(folder, fmt={"onnxruntime": "onnx"}.get(backend, backend)))


def _run_concurrently(call, inputs):
    """call(inputs[i]) from THREADS threads at once, ROUNDS times each, all results kept."""
    results: dict[int, list] = {i: [] for i in range(THREADS)}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(i):
        try:
            start.wait()
            for _ in range(ROUNDS):
                results[i].append(call(inputs[i]))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    return results


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_concurrent_infer_and_predict_on_one_model_match_serial_results(tmp_path, backend):
    model = _load(backend, tmp_path)
    spec = model.manifest.inputs[0]
    rng = np.random.default_rng(0)
    feeds = [{spec.name: rng.normal(0, 1, spec.shape).astype(np.float32)} for _ in range(THREADS)]
    serial = [model.infer(f) for f in feeds]
    results = _run_concurrently(model.infer, feeds)
    for i in range(THREADS):
        for got in results[i]:
            for name, value in serial[i].items():
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    if backend == "litert":
        return  # predict is preprocess + the same infer; the tiny tflite has no classifier head
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(THREADS)]
    serial_p = [model.predict(f) for f in frames]
    results_p = _run_concurrently(model.predict, frames)
    for i in range(THREADS):
        for got in results_p[i]:
            np.testing.assert_array_equal(got.class_ids, serial_p[i].class_ids)
            np.testing.assert_allclose(got.scores, serial_p[i].scores, rtol=1e-5)
