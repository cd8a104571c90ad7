"""A bundle may set only the runtime options on an allow-list: nothing that makes the runtime
write files where the bundle says (OpenVINO's CACHE_DIR, onnxruntime's optimized-model path,
a TensorRT engine cache outside the bundle) or load code."""

from __future__ import annotations

import pytest

import edge_sdk
from edge_sdk.errors import ManifestError
from tests.edge_sdk.bundles import classifier_manifest, write_bundle


def _openvino(m: dict, out) -> dict:
    m["runtime"]["options"]["CACHE_DIR"] = str(out)
    return m


def _ort_option(m: dict, out) -> dict:
    m["runtime"]["options"]["optimized_model_filepath"] = str(out / "model.onnx")
    return m


def _trt_cache(m: dict, out) -> dict:
    m["runtime"]["providers"] = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    m["runtime"]["provider_options"] = {"TensorrtExecutionProvider": {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(out)}}
    return m


def _cpu_provider_option(m: dict, out) -> dict:
    m["runtime"]["provider_options"] = {"CPUExecutionProvider": {"arena_extend_strategy": 1}}
    return m


@pytest.mark.parametrize(("fmt", "change", "word"), [
    ("openvino", _openvino, "CACHE_DIR"),
    ("onnx", _ort_option, "optimized_model_filepath"),
    ("onnx", _trt_cache, "trt_engine_cache_path"),
    ("onnx", _cpu_provider_option, "arena_extend_strategy"),
], ids=["openvino CACHE_DIR", "ort optimized model path", "trt cache outside",
        "cpu provider option"])
def test_runtime_options_outside_the_allow_list_are_refused(tmp_path, fmt, change, word):
    out = tmp_path / "written_here"
    bundle = write_bundle(tmp_path / "bundle", change(classifier_manifest(fmt), out), fmt=fmt)
    with pytest.raises(ManifestError) as err:
        edge_sdk.load(bundle)
    assert word in str(err.value) and "runtime" in str(err.value), str(err.value)
    assert not out.exists(), "the runtime wrote where the bundle told it to"


def test_the_options_the_toolchain_writes_are_accepted(tmp_path):
    m = classifier_manifest("openvino")
    m["runtime"]["options"] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    model = edge_sdk.load(write_bundle(tmp_path, m, fmt="openvino"))
    assert "f32" in model.backend.name


def test_the_device_compile_cache_comes_from_its_own_configuration(tmp_path, monkeypatch):
    """EDGE_SDK_CACHE_DIR (or cache_dir=) is where OpenVINO keeps compiled models: the folder
    fills on the first load and a second load from it gives the same outputs."""
    import numpy as np

    bundle = write_bundle(tmp_path / "bundle", fmt="openvino")
    cache = tmp_path / "device-cache"
    monkeypatch.setenv("EDGE_SDK_CACHE_DIR", str(cache))
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    first = edge_sdk.load(bundle).predict(image)
    blobs = [p for p in cache.rglob("*") if p.is_file()]
    assert blobs and sum(p.stat().st_size for p in blobs) > 1000, "nothing was cached"
    again = edge_sdk.load(bundle, cache_dir=cache).predict(image)
    assert first.class_ids.tolist() == again.class_ids.tolist()
    np.testing.assert_allclose(first.scores, again.scores, rtol=1e-5)
    assert not list((tmp_path / "bundle").rglob("*.blob")), "the cache went into the bundle"


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path):
    from edge_sdk.errors import BackendError

    bundle = write_bundle(tmp_path / "bundle", fmt="openvino")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BackendError, match="compile cache folder"):
        edge_sdk.load(bundle, cache_dir=blocker / "cache")
