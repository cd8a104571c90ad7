"""What a device's store takes in: a downloaded bundle archive (unpacked before its signature is
checked, so it is untrusted) and the first bundle given with `edge-run --seed`."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from edge_sdk.errors import BundleError
from edge_sdk.manifest import Manifest
from edge_sdk.store import Store
from sync import transfer
from tests.fleet.fleet_helpers import make_bundle

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
