"""`edge-opt keygen --out KEY` and `edge-opt sign BUNDLE --key KEY`: signed bundles for a
fleet (devices run `edge-run --store ... --trust KEY.pub`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimize.commands.export import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 signing key pair: KEY (keep secret) and KEY.pub (for devices)",
        description="Write a new Ed25519 key pair. KEY signs bundles; devices trust KEY.pub.",
        epilog="example:\n  mkdir -p keys && edge-opt keygen --out keys/fleet\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="KEY",
                   help="private key path; the public key goes to KEY.pub")
    p.set_defaults(func=run_keygen)

    p = sub.add_parser(
        "sign",
        help="sign a bundle (its manifest, which lists every file's sha256) with a version",
        description="Sign a bundle: writes BUNDLE/signature.json over the model name, the "
                    "version and the manifest's sha256.",
        epilog="example:\n  edge-opt sign edge-out/x86-int8 --key keys/fleet --version 7\n\n"
               "versions only go up: a device refuses a lower one unless the deployment "
               "allows a downgrade.\nDefault version: the current Unix time in seconds.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by `edge-opt export`")
    p.add_argument("--key", type=Path, required=True, help="private key from edge-opt keygen")
    p.add_argument("--version", type=positive_int, metavar="N",
                   help="model version, a positive integer (default: Unix time)")
    p.add_argument("--name", help="model name (default: the bundle folder's name)")
    p.set_defaults(func=run_sign)


def run_keygen(args) -> int:
    from optimize.signing import keygen

    private, public = keygen(args.out)
    print(f"private key {private} (keep it secret; signs bundles)")
    print(f"public key  {public} (give it to devices: edge-run --trust {public})")
    return 0


def run_sign(args) -> int:
    from optimize.signing import sign

    identity = sign(args.bundle, args.key, version=args.version, name=args.name)
    print(f"signed {args.bundle}: {identity.name} version {identity.version} "
          f"(key {identity.key_id}, manifest {identity.manifest_sha256[:12]})")
    return 0
