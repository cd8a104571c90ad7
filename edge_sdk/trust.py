"""Is this bundle from us? Ed25519 signatures over the manifest, checked on the device.

A bundle is signed by `edge-opt sign` (optimize/signing.py), which writes `signature.json`
beside the manifest. What is signed is the model's identity: its name, its version (an integer
that only goes up, so a device can refuse a downgrade) and the sha256 of manifest.json, which
in turn lists the sha256 of every other file: one signature covers the whole bundle.

The device holds only the public key (`KEY.pub`, PEM). Everything in signature.json is
untrusted until the signature checks out; nothing else in the bundle is read before that.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from edge_sdk.errors import BundleError
from edge_sdk.hashing import sha256_file
from edge_sdk.manifest import MANIFEST_NAME, bundle_path

SIGNATURE_NAME = "signature.json"
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_VERSION = 2**53  # what JSON numbers carry exactly everywhere
# sync.topics.NAME_RE's rule; not imported from there: edge_sdk.load must work without paho
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SignatureError(BundleError):
    """The bundle is unsigned, signed by another key, or changed after signing."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a signature vouches for; `key_id` names the key that signed it."""

    name: str
    version: int
    manifest_sha256: str
    key_id: str

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version,
                "manifest_sha256": self.manifest_sha256, "key_id": self.key_id}


def signed_bytes(name: str, version: int, manifest_sha256: str) -> bytes:
    """The exact bytes a signature covers (canonical JSON: sorted keys, no spaces)."""
    body = {"manifest_sha256": manifest_sha256, "name": name, "version": version}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def check_identity(name: object, version: object) -> tuple[str, int]:
    """Refuse a model name or version that a device could not compare or show."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SignatureError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or "
                             "'-'")
    if isinstance(version, bool) or not isinstance(version, int) or not (
            0 < version < MAX_VERSION):
        raise SignatureError(f"model version {version!r} must be a positive integer")
    return name, version


def key_id(public_key) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of sha256(raw key)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file (`edge-opt keygen` writes KEY.pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        data = path.read_bytes()[:MAX_SIGNATURE_BYTES]
    except OSError as exc:
        raise SignatureError(f"cannot read the trusted public key {path}: {exc.strerror}; "
                             "pass the KEY.pub written by `edge-opt keygen`") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key in PEM form; pass the "
                             "KEY.pub written by `edge-opt keygen` (not the private KEY)")
    return key


def read_identity(folder: str | Path) -> ModelIdentity | None:
    """The identity signature.json claims, unverified (None for an unsigned bundle)."""
    record = _read_record(Path(folder))
    if record is None:
        return None
    return record[0]


def verify_bundle(folder: str | Path, public_key) -> ModelIdentity:
    """Check the bundle's signature with `public_key` (a key or a PEM path); returns what
    it vouches for. The manifest's own file hashes are checked by Manifest.read."""
    folder = Path(folder)
    if isinstance(public_key, (str, Path)):
        public_key = load_public_key(public_key)
    record = _read_record(folder)
    if record is None:
        raise SignatureError(f"{folder} is not signed (no {SIGNATURE_NAME}); sign it with "
                             "`edge-opt sign BUNDLE --key KEY`, or stop requiring signatures "
                             "(edge-run without --trust; edge_sdk.load without trust=)")
    identity, signature = record
    from cryptography.exceptions import InvalidSignature

    if identity.key_id != key_id(public_key):
        raise SignatureError(f"{folder} was signed by key {identity.key_id}, not by the "
                             f"trusted key {key_id(public_key)}; sign it with the fleet's key")
    manifest = bundle_path(folder, MANIFEST_NAME, "manifest")
    actual = sha256_file(manifest)
    try:
        public_key.verify(signature, signed_bytes(identity.name, identity.version,
                                                  identity.manifest_sha256))
    except InvalidSignature:
        raise SignatureError(f"{folder}: the signature does not match its name/version "
                             "(signature.json was edited); sign the bundle again") from None
    if actual != identity.manifest_sha256:
        raise SignatureError(f"{folder}: manifest.json changed after the bundle was signed; "
                             "sign it again or copy the original bundle")
    return identity


def _read_record(folder: Path) -> tuple[ModelIdentity, bytes] | None:
    if not (folder / SIGNATURE_NAME).exists() and not (folder / SIGNATURE_NAME).is_symlink():
        return None
    path = bundle_path(folder, SIGNATURE_NAME, "signature")
    with open(path, "rb") as f:
        raw = f.read(MAX_SIGNATURE_BYTES + 1)
    bad = SignatureError(f"{path} is not a signature written by `edge-opt sign`; sign the "
                         "bundle again")
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise bad
    try:
        data = json.loads(raw.decode("utf-8"))
        if data.get("algorithm") != "ed25519":
            raise bad
        name, version = check_identity(data.get("name"), data.get("version"))
        digest, kid = data.get("manifest_sha256"), data.get("key_id")
        signature = base64.b64decode(data.get("signature"), validate=True)
    except (ValueError, TypeError, AttributeError, RecursionError, UnicodeDecodeError):
        raise bad from None
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest) and isinstance(kid, str)
            and re.fullmatch(r"[0-9a-f]{16}", kid) and len(signature) == 64):
        raise bad
    return ModelIdentity(name, version, digest, kid), signature
