"""A malformed manifest is one clear ManifestError naming the field, never a traceback from
deep inside the runtime, and never a bundle that loads and misbehaves later."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import ManifestError
from edge_sdk.hashing import sha256_file
from tests.edge_sdk.bundles import classifier_manifest, write_bundle


def _input(m: dict, **changes) -> dict:
    m["inputs"][0].update(changes)
    return m


def _params(m: dict, **params) -> dict:
    m["task"]["params"] = params
    return m


def _stats(m: dict, stats: dict) -> dict:
    m["calibration_stats"] = stats
    return m


# (id, change to the manifest dict, words the message must contain)
CASES = [
    ("quant scale not a number",
     lambda m: _input(m, dtype="int8", quant={"scale": "x", "zero_point": 0}),
     ["inputs/0/quant/scale"]),
    ("crop_fraction 1e-9", lambda m: _input(m, crop_fraction=1e-9), ["crop_fraction"]),
    ("2-value mean for 3 channels", lambda m: _input(m, mean=[0.0, 0.0]),
     ["mean", "3 channels"]),
    ("NaN mean", lambda m: _input(m, mean=[float("nan")] * 3), ["NaN"]),
    ("top_k five", lambda m: _params(m, top_k="five"), ["top_k"]),
    ("top_k 0", lambda m: _params(m, top_k=0), ["top_k"]),
    ("softmax maybe", lambda m: _params(m, softmax="maybe"), ["softmax"]),
    ("unknown output name", lambda m: m["outputs"][0].update(name="logits") or m,
     ["logits", "output"]),
    ("two outputs, one name", lambda m: m["outputs"].append(dict(m["outputs"][0])) or m,
     ["output", "twice"]),
    ("input shape of floats", lambda m: _input(m, shape=[1.0, 3.0, 32.0, 32.0]),
     ["inputs/0/shape", "not of type 'integer'"]),
    ("threads 2.0", lambda m: m.setdefault("runtime", {}).update(threads=2.0) or m,
     ["runtime/threads", "not of type 'integer'"]),
    ("input shape absurd", lambda m: _input(m, shape=[1, 3, 10**12, 32]), ["inputs/0/shape"]),
    ("input shape not the model's", lambda m: _input(m, shape=[1, 3, 64, 64]),
     ["[1, 3, 32, 32]", "manifest says [1, 3, 64, 64]"]),
    ("input dtype not the model's", lambda m: _input(m, dtype="uint8"),
     ["float32", "manifest says uint8"]),
    ("int8 input without quant", lambda m: _input(m, dtype="int8"), ["quant"]),
    ("unknown top-level key", lambda m: m.update(extra=1) or m, ["extra"]),
    ("calibration edges not numbers",
     lambda m: _stats(m, {"brightness": {"edges": ["x", "y", "z"], "fractions": [0.5, 0.5]}}),
     ["calibration_stats"]),
    ("calibration edges not increasing",
     lambda m: _stats(m, {"brightness": {"edges": [3, 2, 1], "fractions": [0.5, 0.5]}}),
     ["calibration_stats", "increasing"]),
]


def _nested(depth: int) -> str:
    return json.dumps(classifier_manifest())[:-1] + ', "metrics": ' + '{"a": ' * depth + "1" + \
        "}" * depth + "}"


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_manifest_fields_are_one_clear_manifest_error(tmp_path, change, words):
    write_bundle(tmp_path, change(classifier_manifest()))
    with pytest.raises(ManifestError) as err:
        edge_sdk.load(tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("what", ["binary labels", "nested 5000 levels", "nested 100 levels",
                                  "20 MB manifest", "manifest not UTF-8"])
def test_malformed_bundle_files_are_one_clear_manifest_error(tmp_path, what):
    write_bundle(tmp_path)
    manifest = tmp_path / "manifest.json"
    if what == "binary labels":
        data = json.loads(manifest.read_text())
        (tmp_path / "labels.txt").write_bytes(bytes(range(256)) * 4)
        data["files"]["labels"]["sha256"] = sha256_file(tmp_path / "labels.txt")
        manifest.write_text(json.dumps(data))
        words = ["labels.txt", "UTF-8"]
    elif what.startswith("nested"):
        manifest.write_text(_nested(int(what.split()[1])))
        words = ["nested"]
    elif what == "20 MB manifest":
        data = json.loads(manifest.read_text())
        data["metrics"] = {"padding": "x" * (20 << 20)}
        manifest.write_text(json.dumps(data))
        words = ["MB"]
    else:
        manifest.write_bytes(b"\xff\xfe{}")
        words = ["not valid JSON"]
    with pytest.raises(ManifestError) as err:
        edge_sdk.load(tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_the_default_tiny_bundle_loads_and_predicts(tmp_path):
    model = edge_sdk.load(write_bundle(tmp_path))
    result = model.predict(np.full((40, 50, 3), 90, np.uint8))
    assert len(result.class_ids) == 3 and set(result.labels) <= {"cat", "dog", "bird", "fish"}
