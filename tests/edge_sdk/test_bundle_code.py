"""A bundle may carry its decoder as Python code (decoder.py); code from a bundle is untrusted.

`edge_sdk.load` refuses such a bundle unless `trust_code=True` (edge-run --trust-bundle-code);
with it, the file named in the manifest (inside the bundle, hash checked, the same bytes that
were hashed) is executed and its class built. Every failure of that code is one clear error.
Real tiny classifier bundles (tests/edge_sdk/bundles.py); the decoders are small real files.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import edge_sdk
from edge_sdk.decoders.code import DecoderCodeError
from edge_sdk.errors import BundleError, HashMismatchError, ManifestError
from tests.conftest import run_cli
from tests.edge_sdk.bundles import classifier_manifest, write_bundle

DECODER = '''
import numpy as np
from pathlib import Path
from edge_sdk.results import Classification

Path(__file__).with_name("ran.txt").write_text("imported")  # proves the code ran


class Top1:
    task = "classify"

    def __init__(self, labels=(), prefix="user"):
        self.labels, self.prefix = labels, prefix

    def __call__(self, outputs, transform):
        scores = np.asarray(outputs[0]).reshape(-1)
        k = int(scores.argmax())
        return Classification(class_ids=np.array([k]), scores=scores[[k]].astype(np.float32),
                              labels=(f"{self.prefix}:{self.labels[k]}",))
'''


def code_bundle(folder, source: str = DECODER, name: str = "Top1", params=None,
                decoder_path: str = "decoder.py"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decoder.py").write_text(source)
    manifest = classifier_manifest()
    manifest["files"]["decoder"] = {"path": decoder_path, "sha256": "0" * 64}
    manifest["task"] = {"type": "classify", "decoder": f"bundle:{decoder_path}:{name}",
                        "params": params or {}}
    return write_bundle(folder, manifest)


def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_code_is_refused_without_trust_and_never_runs(tmp_path):
    bundle = code_bundle(tmp_path / "b")
    with pytest.raises(BundleError) as info:
        edge_sdk.load(bundle)
    message = str(info.value)
    assert "decoder.py" in message and "trust_code=True" in message
    assert "--trust-bundle-code" in message and "\n" not in message
    assert not (bundle / "ran.txt").exists()


def test_trusted_code_runs_from_the_bundle_and_writes_no_bytecode(tmp_path):
    bundle = code_bundle(tmp_path / "b", params={"prefix": "mine"})
    model = edge_sdk.load(bundle, trust_code=True)
    result = model.predict(frame())
    assert isinstance(result, edge_sdk.Classification)
    assert result.labels[0].startswith("mine:")
    assert (bundle / "ran.txt").read_text() == "imported"
    assert not (bundle / "__pycache__").exists()


def test_changed_code_is_refused_before_it_runs_even_without_verify(tmp_path):
    bundle = code_bundle(tmp_path / "b")
    (bundle / "decoder.py").write_text(DECODER + "\n# changed\n")
    for verify in (True, False):
        with pytest.raises(HashMismatchError, match="decoder.py"):
            edge_sdk.load(bundle, trust_code=True, verify=verify)
    assert not (bundle / "ran.txt").exists()


def test_code_outside_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.py"
    outside.write_text(DECODER)
    bundle = code_bundle(tmp_path / "b")
    (bundle / "decoder.py").unlink()
    os.symlink(outside, bundle / "decoder.py")
    with pytest.raises(BundleError, match="outside the bundle"):
        edge_sdk.load(bundle, trust_code=True, verify=False)
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"]["decoder"]["path"] = "../elsewhere.py"
    data["task"]["decoder"] = "bundle:../elsewhere.py:Top1"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="outside"):
        edge_sdk.load(bundle, trust_code=True, verify=False)
    assert not (tmp_path / "ran.txt").exists()


@pytest.mark.parametrize("change, words", [
    (lambda m: m["files"].pop("decoder"), "does not list"),
    (lambda m: m["task"].update(decoder="topk"), "built-in decoder"),
    (lambda m: m["task"].update(decoder="bundle:decoder.txt:Top1"), "bundle:<file>.py:<Name>"),
    (lambda m: m["task"].update(decoder="bundle:other.py:Top1"), "does not list"),
])
def test_manifest_names_code_consistently(tmp_path, change, words):
    bundle = code_bundle(tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="re-export|" + words) as info:
        edge_sdk.load(bundle, trust_code=True)
    assert words in str(info.value)


@pytest.mark.parametrize("source, name, params, words", [
    ("import no_such_module_here\n", "Top1", None, "No module named"),
    ("raise RuntimeError('boom')\n", "Top1", None, "RuntimeError: boom"),
    ("import sys\nsys.exit(3)\n", "Top1", None, "SystemExit"),
    ("def broken(:\n", "Top1", None, "SyntaxError"),
    (DECODER, "Missing", None, "has no 'Missing'"),
    (DECODER + "\nTOP = 3\n", "TOP", None, "not a class or factory"),
    (DECODER, "Top1", {"nope": 1}, "building it failed: TypeError"),
    (DECODER.replace('task = "classify"', 'task = "magic"'), "Top1", None, "task attribute"),
])
def test_broken_code_is_one_clear_error(tmp_path, source, name, params, words):
    bundle = code_bundle(tmp_path / "b", source, name, params)
    with pytest.raises(DecoderCodeError) as info:
        edge_sdk.load(bundle, trust_code=True)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("body, words", [
    ("raise ValueError('bad frame')", "failed on this frame: ValueError: bad frame"),
    ("return {'not': 'a result'}", "returned a dict"),
])
def test_a_decoder_failing_on_a_frame_is_a_clear_error(tmp_path, body, words):
    source = DECODER.replace("        scores = np.asarray", f"        {body}\n        scores = "
                             "np.asarray")
    model = edge_sdk.load(code_bundle(tmp_path / "b", source), trust_code=True)
    with pytest.raises(DecoderCodeError, match=words):
        model.predict(frame())


def test_edge_run_needs_the_trust_flag(tmp_path, data_dir):
    bundle = code_bundle(tmp_path / "b")
    refused = run_cli("edge-run", bundle, "--source", data_dir / "eval" / "fruits.jpg")
    assert refused.returncode == 2
    assert "--trust-bundle-code" in refused.stderr and "Traceback" not in refused.stderr
    ran = run_cli("edge-run", bundle, "--source", data_dir / "eval" / "fruits.jpg",
                  "--trust-bundle-code", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "user:" in ran.stdout
