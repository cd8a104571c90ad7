"""A Jetson bundle on a host whose onnxruntime lacks TensorRT/CUDA runs on the CPU, and says
so: which provider runs, which were missing, and (once) how to install the JetPack build."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import edge_sdk
from edge_sdk.backends import onnxruntime as ort_backend
from edge_sdk.errors import BackendError
from edge_sdk.manifest import Manifest
from tests.conftest import run_cli
from tests.edge_sdk.bundles import classifier_manifest, write_bundle

GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
pytestmark = pytest.mark.skipif(
    any(p in ort.get_available_providers() for p in GPU),
    reason="this onnxruntime has a GPU provider: nothing is missing here")


def jetson_bundle(folder):
    """What `edge-opt export -t jetson-int8` writes into the runtime section."""
    m = classifier_manifest()
    m["target"], m["profile"] = "jetson-orin-nano-fp32", "jetson-orin-nano"
    m["runtime"].update(
        providers=[*GPU, "CPUExecutionProvider"],
        provider_options={"TensorrtExecutionProvider": {
            "trt_fp16_enable": False, "trt_int8_enable": False,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": "trt_cache"}},
        options={"tensorrt": {"trtexec": "trtexec --onnx=model.onnx", "note": "..."}})
    return write_bundle(folder, m)


def test_missing_tensorrt_provider_is_named_and_warned_about_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ort_backend, "_warned", set(), raising=False)
    bundle = jetson_bundle(tmp_path / "bundle")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = edge_sdk.load(bundle)
        edge_sdk.load(bundle)
    assert model.backend.providers == ["CPUExecutionProvider"]
    assert model.backend.missing_providers == GPU
    assert "[CPUExecutionProvider]" in model.backend.name
    loud = [w for w in caught if "TensorrtExecutionProvider" in str(w.message)]
    assert len(loud) == 1, [str(w.message) for w in caught]
    message = str(loud[0].message)
    for words in ("JetPack", "onnxruntime-gpu", "CPUExecutionProvider"):
        assert words in message, message

    cv2.imwrite(str(tmp_path / "frame.jpg"), np.full((40, 60, 3), 128, np.uint8))
    result = run_cli("edge-run", bundle, "--source", tmp_path / "frame.jpg")
    warned = [line for line in result.stderr.splitlines() if "JetPack" in line]
    assert len(warned) == 1 and warned[0].startswith("edge-run: warning:"), result.stderr
    assert "runs on: onnxruntime" in result.stderr and "[CPUExecutionProvider]" in result.stderr
    assert "Traceback" not in result.stderr


def test_tensorrt_caches_go_to_the_device_cache_folder_never_the_bundle(tmp_path, monkeypatch):
    """TensorRT loads an engine found in its cache instead of building one from the model: in
    the bundle (where the manifest's trt_cache pointed) an unhashed, unsigned engine file
    would run in place of the verified model. (TensorRT itself does not run here; this is the
    option mapping the backend hands onnxruntime.)"""
    bundle = jetson_bundle(tmp_path / "bundle")
    manifest = Manifest.read(bundle, verify=True)
    trt = manifest.runtime.provider_options["TensorrtExecutionProvider"]
    key = manifest.files["model"].sha256[:16]

    options = ort_backend.provider_options(trt, manifest, tmp_path / "cache")
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "tensorrt" / key)
    assert options["trt_engine_cache_enable"] is True and options["trt_fp16_enable"] is False
    assert (tmp_path / "cache" / "tensorrt" / key).is_dir() and not (bundle / "trt_cache").exists()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # no cache_dir: the user's
    options = ort_backend.provider_options(trt, manifest, None)
    assert options["trt_engine_cache_path"] == str(tmp_path / "xdg" / "edge-sdk" / "tensorrt" / key)

    (tmp_path / "a-file").write_text("")
    with pytest.raises(BackendError, match="EDGE_SDK_CACHE_DIR"):
        ort_backend.provider_options(trt, manifest, tmp_path / "a-file")
