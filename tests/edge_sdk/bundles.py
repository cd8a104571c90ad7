"""Tiny real bundles written by hand (no CLI), as a dict the tests can bend before writing.

`classifier_manifest` is what `edge-opt export` writes for the tiny classifier of
tests/optimize/tiny_models.py; `write_bundle` writes the model (ONNX, or OpenVINO IR converted
by OpenVINO itself), labels and the manifest with correct hashes unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_sdk.hashing import sha256_file
from tests.optimize.tiny_models import tiny_classifier

HW = 32
LABELS = ("cat", "dog", "bird", "fish")


def classifier_manifest(fmt: str = "onnx") -> dict:
    backend = {"onnx": "onnxruntime", "openvino": "openvino"}[fmt]
    files = {"model": {"path": "model.onnx" if fmt == "onnx" else "model.xml", "sha256": "0" * 64},
             "labels": {"path": "labels.txt", "sha256": "0" * 64}}
    if fmt == "openvino":
        files["weights"] = {"path": "model.bin", "sha256": "0" * 64}
    return {
        "schema_version": 1,
        "created_by": "tests",
        "target": f"x86-fp32-{fmt}",
        "profile": "x86",
        "precision": "fp32",
        "format": fmt,
        "runtime": {"backend": backend, "threads": 1, "providers": [], "provider_options": {},
                    "options": {"INFERENCE_PRECISION_HINT": "f32"} if fmt == "openvino" else {}},
        "files": files,
        "inputs": [{"name": "input", "shape": [1, 3, HW, HW], "dtype": "float32",
                    "layout": "NCHW", "color": "RGB", "resize": "stretch",
                    "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0],
                    "crop_fraction": 0.875, "pad_value": 114, "quant": None}],
        "outputs": [{"name": "output", "shape": [1, len(LABELS)], "dtype": "float32"}],
        "task": {"type": "classify", "decoder": "topk", "params": {"top_k": 3}},
        "quantization": None,
        "source": {},
        "metrics": {},
        "calibration_stats": None,
    }


def write_bundle(folder: Path, manifest: dict | None = None, *, fmt: str = "onnx",
                 rehash: bool = True) -> Path:
    """The tiny classifier as a bundle in `folder`; `manifest` replaces the default one.

    With `rehash`, every file the manifest names that exists inside the folder gets its real
    sha256 (so a test changes one thing, not the hashes too)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = tiny_classifier(folder / "model.onnx", hw=HW, classes=len(LABELS))
    if fmt == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"),
                      compress_to_fp16=False)
        onnx_path.unlink()
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    data = manifest if manifest is not None else classifier_manifest(fmt)
    if rehash and isinstance(data.get("files"), dict):
        for entry in data["files"].values():
            path = folder / str(entry.get("path", "")) if isinstance(entry, dict) else None
            if path is not None and path.is_file() and path.resolve().is_relative_to(
                    folder.resolve()):
                entry["sha256"] = sha256_file(path)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder
