"""Make keys and sign bundles (Ed25519, `cryptography`); edge_sdk/trust.py verifies.

`keygen` writes KEY (private, PKCS#8 PEM, mode 0600) and KEY.pub (what devices trust).
`sign` writes BUNDLE/signature.json over the bundle's name, version and manifest sha256; the
version defaults to the current Unix time in seconds, which only goes up between signings.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from edge_sdk.errors import EdgeError
from edge_sdk.hashing import sha256_file
from edge_sdk.manifest import MANIFEST_NAME, Manifest
from edge_sdk.trust import (
    SIGNATURE_NAME,
    ModelIdentity,
    check_identity,
    key_id,
    signed_bytes,
    verify_bundle,
)


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new key pair OUT and OUT.pub; never replaces an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise EdgeError(f"{path} already exists; keygen never replaces a key (devices "
                            "trust it): choose another --out or remove it yourself")
    if not private_path.parent.is_dir():
        raise EdgeError(f"folder {private_path.parent} does not exist; create it first")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    written = private_path
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        written = public_path
        public_path.write_bytes(public_pem)
    except OSError as exc:
        if written == public_path:  # half a pair is no key: take the private half back
            private_path.unlink(missing_ok=True)
        raise EdgeError(f"cannot write {written.name} in {written.parent} "
                        f"({exc.strerror or exc}); choose a writable --out") from None
    return private_path, public_path


def load_private_key(path: str | Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EdgeError(f"cannot read signing key {path}: {exc.strerror}; make one with "
                        "`edge-opt keygen --out KEY`") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgeError(f"{path} is not an unencrypted Ed25519 private key in PEM form; pass "
                        "the KEY (not KEY.pub) written by `edge-opt keygen`")
    return key


def sign(bundle: str | Path, key_path: str | Path, *, version: int | None = None,
         name: str | None = None) -> ModelIdentity:
    """Sign BUNDLE (checked first: a bundle whose files do not match is never signed)."""
    folder = Path(bundle)
    key = load_private_key(key_path)
    Manifest.read(folder, verify=True)
    name = name or _default_name(folder)
    version = int(time.time()) if version is None else version
    name, version = check_identity(name, version)
    digest = sha256_file(folder / MANIFEST_NAME)
    signature = key.sign(signed_bytes(name, version, digest))
    record = {"algorithm": "ed25519", "key_id": key_id(key.public_key()), "name": name,
              "version": version, "manifest_sha256": digest,
              "signature": base64.b64encode(signature).decode()}
    tmp = folder / f".{SIGNATURE_NAME}.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, folder / SIGNATURE_NAME)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
        raise EdgeError(f"cannot write {SIGNATURE_NAME} in {folder} ({exc.strerror or exc}); "
                        "sign a writable copy of the bundle") from None
    return verify_bundle(folder, key.public_key())


def _default_name(folder: Path) -> str:
    """The bundle folder's name, made topic-safe (x86-int8 stays x86-int8)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in folder.resolve().name)
    return safe[:64] or "model"
