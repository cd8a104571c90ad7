"""A bundle is untrusted input: the files its manifest names must stay inside its folder.

Every path that leaves the bundle (absolute, `..`, a symlink leading out) is refused before
anything outside is opened, with or without hash checks, and the message is the same whether
or not the outside file exists (no probing a device's filesystem through error messages).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import edge_sdk
from edge_sdk.errors import BundleError
from edge_sdk.hashing import sha256_file
from tests.edge_sdk.bundles import classifier_manifest, write_bundle

_OPENED: list[str] = []
_WATCHING = [False]


def _audit(event: str, args: tuple) -> None:
    if _WATCHING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_during(call) -> list[str]:
    """Paths Python opened while `call` ran (the audit hook sees every open())."""
    _OPENED.clear()
    _WATCHING[0] = True
    try:
        call()
    finally:
        _WATCHING[0] = False
    return list(_OPENED)


def _case(tmp_path, kind: str, target_exists: bool):
    """A bundle whose `labels` (or `model`) entry leads to tmp_path/outside/secret.txt."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    if target_exists:
        secret.write_text("stolen\nlabels\n")
    bundle = tmp_path / "bundle"
    manifest = classifier_manifest()
    key = "model" if kind == "model absolute" else "labels"
    path = {"labels absolute": str(secret), "model absolute": str(secret),
            "manifest symlink": "labels.txt",
            "labels ..": "../outside/secret.txt",
            "labels sub/../..": "sub/../../outside/secret.txt",
            "labels symlink": "link.txt", "labels dir symlink": "linkdir/secret.txt"}[kind]
    manifest["files"][key]["path"] = path
    write_bundle(bundle, manifest)
    if kind == "labels symlink":
        (bundle / "link.txt").symlink_to(secret)
    if kind == "labels dir symlink":
        (bundle / "linkdir").symlink_to(outside, target_is_directory=True)
    if target_exists:  # the attacker knows the outside file: its hash matches
        manifest["files"][key]["sha256"] = sha256_file(secret)
        write_bundle(bundle, manifest, rehash=False)
    if kind == "manifest symlink":  # a valid manifest, but outside the bundle
        if target_exists:
            (bundle / "manifest.json").replace(secret)
        else:
            (bundle / "manifest.json").unlink()
        (bundle / "manifest.json").symlink_to(secret)
    return bundle, outside


KINDS = ["labels absolute", "model absolute", "labels ..", "labels sub/../..",
         "labels symlink", "labels dir symlink", "manifest symlink"]


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("kind", KINDS)
def test_manifest_paths_outside_the_bundle_are_refused_without_reading_or_revealing(
        tmp_path, kind, verify):
    messages = []
    for exists in (True, False):
        root = tmp_path / ("exists" if exists else "missing")
        root.mkdir()
        bundle, outside = _case(root, kind, exists)
        error: list[BaseException] = []

        def load(bundle=bundle, error=error):
            try:
                edge_sdk.load(bundle, verify=verify)
            except BundleError as exc:
                error.append(exc)

        opened = opened_during(load)
        assert error, f"{kind}: a path outside the bundle was accepted"
        message = str(error[0])
        assert "outside the bundle" in message, message
        assert not [p for p in opened if str(outside) in os.path.abspath(p)], opened
        messages.append(message.replace(str(root), "ROOT"))
    assert messages[0] == messages[1], "the message must not say whether the file exists"


def test_openvino_weights_not_named_in_the_manifest_are_refused(tmp_path):
    """OpenVINO reads model.bin next to model.xml by itself: unless the manifest names it,
    neither the path rule nor the hash would cover it (here: a link to outside weights)."""
    manifest = classifier_manifest("openvino")
    del manifest["files"]["weights"]
    bundle = write_bundle(tmp_path / "bundle", manifest, fmt="openvino")
    outside = tmp_path / "outside.bin"
    (bundle / "model.bin").rename(outside)
    (bundle / "model.bin").symlink_to(outside)
    with pytest.raises(BundleError, match="weights"):
        edge_sdk.load(bundle)


@pytest.mark.parametrize("kind, words", [
    ("loop", "symlink loop"), ("fifo", "not a regular file"), ("folder", "not a regular file"),
    ("missing", "is missing")])
def test_a_labels_entry_that_is_not_a_file_is_named_for_what_it_is(tmp_path, kind, words):
    """A FIFO was reported as missing and a link loop as leading outside the bundle (and a
    FIFO must not be opened: reading it blocks forever)."""
    bundle = write_bundle(tmp_path / "bundle")
    labels = bundle / "labels.txt"
    labels.unlink()
    if kind == "loop":
        labels.symlink_to(bundle / "other.txt")
        (bundle / "other.txt").symlink_to(labels)
    elif kind == "fifo":
        os.mkfifo(labels)
    elif kind == "folder":
        labels.mkdir()
    for verify in (True, False):
        with pytest.raises(BundleError, match=words):
            edge_sdk.load(bundle, verify=verify)


def test_a_bundle_folder_whose_name_is_not_utf8_is_refused_clearly(tmp_path):
    """onnxruntime failed with 'incompatible constructor arguments' on such a path."""
    bundle = write_bundle(tmp_path / "bundle")
    renamed = Path(os.fsdecode(bytes(tmp_path) + b"/b\xff"))
    bundle.rename(renamed)
    with pytest.raises(BundleError, match="not valid UTF-8.*rename the folder"):
        edge_sdk.load(renamed)
