"""Signing and the checks around a bundle from outside: keys, signatures, versions, archives,
deployment messages. Fast: no broker, no device process (except the CLI error paths)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import edge_sdk
from edge_sdk.deploy_agent import Deployment
from edge_sdk.errors import BundleError, HashMismatchError
from edge_sdk.store import Store
from edge_sdk.trust import SignatureError, verify_bundle
from optimize import cli as opt_cli
from sync import transfer
from tests.fleet.fleet_helpers import ROOT, make_bundle, make_keys, signed_bundle


def test_keygen_writes_a_private_key_only_we_can_read_and_never_replaces_one(tmp_path):
    private, public = make_keys(tmp_path)
    assert os.stat(private).st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    assert opt_cli.main(["keygen", "--out", str(private)]) == 2


def test_signed_bundle_loads_with_its_key_and_nothing_else(tmp_path):
    private, public = make_keys(tmp_path / "k")
    other_private, other_public = make_keys(tmp_path / "k", "other")
    bundle = signed_bundle(tmp_path / "b", private, 7)
    assert edge_sdk.load(bundle, trust=public).predict(
        __import__("numpy").zeros((32, 32, 3), "uint8")) is not None
    assert verify_bundle(bundle, public).version == 7
    with pytest.raises(SignatureError, match="signed by key"):
        edge_sdk.load(bundle, trust=other_public)
    with pytest.raises(SignatureError, match="not signed"):
        edge_sdk.load(make_bundle(tmp_path / "unsigned"), trust=public)
    with pytest.raises(SignatureError, match="Ed25519 public key"):
        edge_sdk.load(bundle, trust=private)  # the private key is not a trust anchor


def test_changes_after_signing_are_refused(tmp_path):
    private, public = make_keys(tmp_path / "k")
    bundle = signed_bundle(tmp_path / "b", private, 3)
    record = json.loads((bundle / "signature.json").read_text())
    record["version"] = 99  # a downgrade protection bypass attempt
    (bundle / "signature.json").write_text(json.dumps(record))
    with pytest.raises(SignatureError, match="does not match"):
        verify_bundle(bundle, public)
    bundle = signed_bundle(tmp_path / "c", private, 3)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["task"]["params"]["top_k"] = 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="manifest.json changed"):
        verify_bundle(bundle, public)
    bundle = signed_bundle(tmp_path / "d", private, 3)
    (bundle / "labels.txt").write_text("a\nb\nc\nd\n")  # covered through the manifest's hash
    with pytest.raises(HashMismatchError):
        edge_sdk.load(bundle, trust=public)


def test_sign_cli_errors_are_one_line(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b")
    assert opt_cli.main(["sign", str(bundle), "--key", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edge-opt keygen" in err[0]
    private, _ = make_keys(tmp_path / "k")
    assert opt_cli.main(["sign", str(bundle), "--key", str(private), "--version", "4",
                         "--name", "door-cam"]) == 0
    assert json.loads((bundle / "signature.json").read_text())["name"] == "door-cam"


def test_edge_run_store_errors_are_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_sdk.cli", "--store",
                               str(tmp_path / "s"), "--source", str(tmp_path),
                               "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "cam", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    done = run()
    assert done.returncode == 2 and "--seed BUNDLE" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = run("--seed", str(tmp_path / "no-bundle"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = run("--trust", str(tmp_path / "nope.pub"))
    assert done.returncode == 2 and "cannot read the trusted public key" in done.stderr
    assert "Traceback" not in done.stderr


def _tar(path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_archives_with_paths_or_links_are_refused(tmp_path):
    store = Store(tmp_path / "store")
    for i, (name, kind) in enumerate([("../evil", tarfile.REGTYPE), ("sub/x", tarfile.REGTYPE),
                                      ("link", tarfile.SYMTYPE)]):
        with pytest.raises(BundleError, match="not a plain file"):
            store.unpack(_tar(tmp_path / f"{i}.tar", name, kind=kind), f"d{i}")
    assert not (tmp_path / "evil").exists()
    assert list(store.slots.iterdir()) == []


def test_deployment_messages_are_validated(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    plan = transfer.plan_blob(transfer.pack_bundle(bundle, tmp_path / "b.tar"))
    good = {"id": "r1", "name": "tiny", "version": 2, "blob": plan.to_dict()}
    assert Deployment.parse(json.dumps(good).encode()).version == 2
    bad_cases = [
        {**good, "id": "../x"},
        {**good, "version": -1},
        {**good, "version": True},
        {**good, "url": "file:///etc/passwd"},
        {**good, "blob": {**plan.to_dict(), "chunks": plan.to_dict()["chunks"][:-1] + ["zz"]}},
        {**good, "blob": {**plan.to_dict(), "size": 10**15}},
        {**good, "gate": {"frames": 0}},
        {**good, "allow_downgrade": "yes"},
    ]
    for case in bad_cases:
        with pytest.raises((ValueError, BundleError)):
            Deployment.parse(json.dumps(case).encode())


def test_export_sign_signs_each_bundle_and_refuses_a_bad_key_first(tmp_path):
    from tests.optimize.tiny_models import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    private, public = make_keys(tmp_path / "k")

    def export(key: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "optimize.cli", "export", str(model), "-t",
                               "x86-fp32", "--format", "onnx", "--out", str(tmp_path / "out"),
                               "--sign", str(key), "--model-version", "9", "--runs", "3", "-q"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)

    done = export(public)  # the public key cannot sign: refused before any work
    assert done.returncode == 2 and "not an unencrypted Ed25519 private key" in done.stderr
    assert not (tmp_path / "out").exists()
    done = export(private)
    assert done.returncode == 0, done.stderr
    identity = verify_bundle(tmp_path / "out" / "x86-fp32", public)
    assert (identity.name, identity.version) == ("x86-fp32", 9)


def test_fleet_file_errors_are_one_line(tmp_path, capsys):
    from sync import fleet

    assert fleet.main(["pack", str(tmp_path / "nope"), str(tmp_path / "x.tar")]) == 2
    assert fleet.main(["pack", str(make_bundle(tmp_path / "b")), str(tmp_path / "no/x.tar")]) == 2
    (tmp_path / "state.json").write_text("{")
    assert fleet.main(["--broker", "mqtt://127.0.0.1:1", "rollouts", "--state",
                       str(tmp_path / "state.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("edge-fleet: ") for line in err), err
    assert "rollout state" in err[2] and "cannot be read" in err[2]


def test_pack_never_writes_into_the_bundle_and_replaces_an_archive_whole(tmp_path, capsys):
    """`edge-fleet pack B B/model.onnx` replaced the bundle's model with the archive, and
    `pack B B/bundle.tar` twice put the old archive inside the new one."""
    import tarfile

    from sync import fleet

    bundle = make_bundle(tmp_path / "b")
    files = {p.name: p.read_bytes() for p in bundle.iterdir()}
    for out in (bundle / "model.onnx", bundle / "bundle.tar"):
        assert fleet.main(["pack", str(bundle), str(out)]) == 2
    assert "inside the bundle folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == files
    archive = tmp_path / "x.tar"
    archive.write_text("the last archive")
    assert fleet.main(["pack", str(bundle), str(archive)]) == 0
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "x.tar"]  # no temporary left
