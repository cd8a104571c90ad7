"""What a device's store takes in: a downloaded bundle archive (unpacked before its signature is
checked, so it is untrusted) and the first bundle given with `edge-run --seed`."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from edge_sdk.deploy_agent import unsigned_identity
from edge_sdk.errors import BundleError
from edge_sdk.manifest import Manifest
from edge_sdk.store import Store
from sync import transfer
from tests.conftest import run_cli
from tests.fleet.fleet_helpers import frames_folder, make_bundle

_WRITES: list[str] = []
_WATCHING = [False]


def _audit(event: str, args: tuple) -> None:
    if (_WATCHING[0] and event == "open" and isinstance(args[0], (str, os.PathLike))
            and isinstance(args[1], str) and set(args[1]) & set("wxa+")):
        _WRITES.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _sparse_header(name: str, real_size: int) -> bytes:
    """A GNU sparse member ('S', as `tar --sparse --format=gnu` writes for a file of zeros):
    no data in the archive, `real_size` bytes once unpacked."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[483:495] = b"%011o\0" % real_size  # the GNU header's realsize field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _archive(path: Path, sparse_size: int) -> Path:
    """A small plain manifest.json, then a sparse model.onnx of `sparse_size` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    plain = buf.getvalue()
    end = plain.rstrip(b"\0")  # the members, without the end-of-archive blocks
    end += b"\0" * (-len(end) % 512)
    path.write_bytes(end + _sparse_header("model.onnx", sparse_size) + b"\0" * 1024)
    return path


def test_a_sparse_member_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    blob = _archive(tmp_path / "bundle.tar", 100 << 20)
    with tarfile.open(blob) as tar:  # what the old check let through: a "regular" member
        model = tar.getmember("model.onnx")
        assert model.isreg() and model.issparse() and model.size == 100 << 20
    assert blob.stat().st_size < 10_000
    store = Store(tmp_path / "store")
    _WRITES.clear()
    _WATCHING[0] = True
    try:
        with pytest.raises(BundleError, match="'model.onnx' as a sparse file") as caught:
            store.unpack(blob, "dep1")
    finally:
        _WATCHING[0] = False
    assert "\n" not in str(caught.value)
    assert [w for w in _WRITES if w.startswith(str(store.root))] == []  # not even manifest.json
    assert list(store.slots.iterdir()) == []


def test_a_normal_bundle_archive_still_unpacks(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    blob = transfer.pack_bundle(bundle, tmp_path / "b.tar")
    staged = Store(tmp_path / "store").unpack(blob, "dep1")
    assert sorted(p.name for p in staged.iterdir()) == ["labels.txt", "manifest.json",
                                                        "model.onnx"]
    Manifest.read(staged, verify=True)  # every file, every hash


def test_seed_copies_the_top_level_files_of_a_bundle_with_a_subfolder(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / ".ipynb_checkpoints").mkdir()  # what Jupyter leaves next to the files
    (bundle / ".ipynb_checkpoints" / "notes.txt").write_text("x")
    (bundle / "root").symlink_to("/")  # a link leading out: never followed
    (bundle / "alias.onnx").symlink_to("model.onnx")  # a link inside: copied as its file
    store = tmp_path / "store"
    done = run_cli("edge-run", "--store", store, "--seed", bundle, "--source",
                   frames_folder(tmp_path / "frames"), "--mqtt", "mqtt://127.0.0.1:1",
                   "--device-id", "cam-01", "--max-frames", "1", timeout=120)
    assert "Traceback" not in done.stderr and "IsADirectoryError" not in done.stderr, done.stderr
    slot = Store(store).path(Store(store).active().slot)
    assert sorted(p.name for p in slot.iterdir()) == ["alias.onnx", "labels.txt",
                                                      "manifest.json", "model.onnx"]
    assert not (slot / "alias.onnx").is_symlink()
    Manifest.read(slot, verify=True)
    other = make_bundle(tmp_path / "other", seed=1)  # a store that runs: --seed is said unused
    again = run_cli("edge-run", "--store", store, "--seed", other, "--source",
                    frames_folder(tmp_path / "frames"), "--mqtt", "mqtt://127.0.0.1:1",
                    "--device-id", "cam-01", "--max-frames", "1", timeout=120)
    assert f"--seed {other} ignored: store {store} already has an active bundle" in again.stderr
    assert Store(store).path(Store(store).active().slot) == slot


def test_seed_refuses_in_one_line_a_manifest_naming_a_file_in_a_subfolder(
        tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "weights").mkdir()
    (bundle / "model.onnx").rename(bundle / "weights" / "model.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model"]["path"] = "weights/model.onnx"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    Manifest.read(bundle, verify=True)  # a valid bundle, which a deployment could not carry
    store = Store(tmp_path / "store")
    with pytest.raises(BundleError, match="names 'weights/model.onnx', which the store does "
                                          "not keep") as caught:
        store.seed(bundle, unsigned_identity(bundle))
    assert "\n" not in str(caught.value)
    assert store.active() is None and list(store.slots.iterdir()) == []


def _not_loading(folder: Path) -> Path:
    """A valid bundle whose manifest names an output the model does not have."""
    bundle = make_bundle(folder)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "nope"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_a_seed_that_does_not_load_never_becomes_the_stores_only_bundle(tmp_path: Path) -> None:
    """It was committed before loading: every later start failed, and a corrected --seed was
    ignored ("the store already has an active bundle"), so only deleting the store helped."""
    store, frames = tmp_path / "store", frames_folder(tmp_path / "frames")

    def run(seed: Path):
        return run_cli("edge-run", "--store", store, "--seed", seed, "--source", frames,
                       "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "cam-01",
                       "--max-frames", "1", timeout=120)  # fmt: skip

    bad = run(_not_loading(tmp_path / "bad"))
    assert bad.returncode == 2 and "no output named 'nope'" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and Store(store).active() is None
    good = make_bundle(tmp_path / "good", seed=1)
    first = run(good)
    assert first.returncode == 0, first.stderr
    assert Store(store).active() is not None
    # A store whose only bundle stopped loading (seeded before this check) takes a new seed.
    other = tmp_path / "store2"
    Store(other).seed(_not_loading(tmp_path / "bad2"), unsigned_identity(tmp_path / "bad2"))
    store = other
    again = run(good)
    assert "does not load" in again.stderr and "replacing it with --seed" in again.stderr
    assert Manifest.read(Store(other).path(Store(other).active().slot)).outputs[0].name != "nope"
