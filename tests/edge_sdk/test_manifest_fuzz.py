"""Property: whatever a bundle's manifest holds, `edge_sdk.load` (and, when it loads, `predict`
and the drift monitor) gives a valid result or one EdgeError, never another exception, and
never opens a file outside the bundle.

Hypothesis starts from a valid manifest and bends it: any field replaced by arbitrary JSON or
deleted, unknown keys added, file paths pointed outside (absolute, `..`, symlinks), NaN and
huge numbers. Outside the bundle sits a file whose sha256 the manifest may quote, so a hash
check alone would not stop a read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import edge_sdk
from edge_sdk.drift import DriftMonitor
from edge_sdk.errors import EdgeError
from edge_sdk.hashing import sha256_file
from tests.edge_sdk.bundles import classifier_manifest, write_bundle

_OPENED: list[str] = []
_WATCHING = [False]


def _audit(event: str, args: tuple) -> None:
    if _WATCHING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PATHS = st.sampled_from([
    "labels.txt", "model.onnx", "./labels.txt", "sub/../labels.txt", "missing.txt", "", "a\\b",
    "nul\x00.txt", "../outside/secret.txt", "sub/../../outside/secret.txt", "link.txt",
    "linkdir/secret.txt", "loop.txt", "{outside}/secret.txt", "/etc/passwd",
])


PLAUSIBLE = {  # values near the valid ones, so many bundles load and run
    ("inputs", 0, "mean"): st.lists(st.floats(-300, 300), min_size=1, max_size=4),
    ("inputs", 0, "std"): st.lists(st.floats(-1, 300), min_size=1, max_size=4),
    ("inputs", 0, "crop_fraction"): st.floats(0, 1.5),
    ("inputs", 0, "resize"): st.sampled_from(["stretch", "letterbox", "center-crop", "fit"]),
    ("inputs", 0, "color"): st.sampled_from(["RGB", "BGR", "GRAY", "rgb"]),
    ("inputs", 0, "layout"): st.sampled_from(["NCHW", "NHWC"]),
    ("inputs", 0, "dtype"): st.sampled_from(["float32", "float16", "uint8", "int8", "f32"]),
    ("inputs", 0, "pad_value"): st.integers(-5, 300),
    ("inputs", 0, "quant"): st.none() | st.fixed_dictionaries(
        {"scale": st.floats(-1, 1), "zero_point": st.integers(-200, 300)}),
    ("outputs", 0, "name"): st.sampled_from(["output", "logits"]),
    ("task", "type"): st.sampled_from(["classify", "detect", "raw"]),
    ("task", "decoder"): st.sampled_from(["topk", "yolov8", "ssd", "yolo-nms", "nope"]),
    ("task", "params"): st.fixed_dictionaries({}, optional={
        "top_k": st.integers(-1, 2000), "softmax": st.booleans() | st.text(max_size=3),
        "conf_threshold": st.floats(-1, 2), "input_hw": st.lists(st.integers(-1, 64),
                                                                 max_size=3)}),
    ("runtime", "threads"): st.integers(-1, 2000),
    ("runtime", "options"): st.dictionaries(
        st.sampled_from(["intra_op_allow_spinning", "CACHE_DIR", "tensorrt"]), st.booleans()),
    ("runtime", "providers"): st.lists(st.sampled_from(
        ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]),
        max_size=3),
}


def _set(tree, path, value) -> None:
    """tree[path] = value, unless an earlier change removed the way there."""
    for step in path[:-1]:
        try:
            tree = tree[step]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(tree, dict) or (isinstance(tree, list) and isinstance(path[-1], int)
                                  and path[-1] < len(tree)):
        tree[path[-1]] = value


def _paths(value, prefix=()):
    """Every (path, value) in a JSON tree, the root excluded."""
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield (*prefix, key), child
        yield from _paths(child, (*prefix, key))


@st.composite
def manifests(draw):
    m = classifier_manifest()
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in _paths(m)]
        kind = draw(st.sampled_from(["plausible", "plausible", "replace", "delete", "add",
                                     "file path", "file hash"]))
        if kind == "plausible":
            path = draw(st.sampled_from(sorted(PLAUSIBLE, key=str)))
            _set(m, path, draw(PLAUSIBLE[path]))
            continue
        if kind == "file path" or kind == "file hash":
            key = draw(st.sampled_from(["model", "labels", "weights"]))
            entry = m.setdefault("files", {}) if isinstance(m.get("files"), dict) else None
            if entry is None:
                continue
            entry.setdefault(key, {"path": "x", "sha256": "0" * 64})
            if isinstance(entry[key], dict):
                if kind == "file path":
                    entry[key]["path"] = draw(PATHS)
                else:
                    entry[key]["sha256"] = "OUTSIDE"  # replaced by the outside file's hash
            continue
        path = draw(st.sampled_from(paths))
        parent = m
        for step in path[:-1]:
            parent = parent[step]
        if kind == "replace":
            parent[path[-1]] = draw(JSON)
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON)
    return m


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("template") / "bundle")


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(manifest=manifests(), verify=st.booleans())
def test_any_manifest_gives_a_clear_error_or_a_working_model_and_never_reads_outside(
        template, manifest, verify):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside = root / "outside"
        outside.mkdir()
        secret = outside / "secret.txt"
        secret.write_text("stolen\n")
        bundle = root / "bundle"
        shutil.copytree(template, bundle)
        (bundle / "link.txt").symlink_to(secret)
        (bundle / "linkdir").symlink_to(outside, target_is_directory=True)
        (bundle / "loop.txt").symlink_to(bundle / "loop.txt")
        text = json.dumps(manifest).replace("{outside}", str(outside)).replace(
            '"OUTSIDE"', json.dumps(sha256_file(secret)))
        (bundle / "manifest.json").write_text(text)

        _OPENED.clear()
        _WATCHING[0] = True
        try:
            model = edge_sdk.load(bundle, verify=verify)
        except EdgeError as exc:
            assert str(exc).strip(), "an error must say what is wrong"
            event(f"refused: {type(exc).__name__}")
            model = None
        finally:
            _WATCHING[0] = False
        read_outside = [p for p in _OPENED if p.startswith(str(outside)) or p == "/etc/passwd"]
        assert not read_outside, read_outside
        if model is None:
            return
        event("loaded")
        try:
            model.predict(np.full((24, 40, 3), 77, np.uint8))
            DriftMonitor.from_manifest(model.manifest)
        except EdgeError as exc:
            assert str(exc).strip()
