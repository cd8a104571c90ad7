"""`edge-run BUNDLE --source ...`: run a bundle on the device.

This first version runs images (a file or a folder); camera, video and RTSP sources arrive
with the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_sdk.errors import EdgeError, SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

EPILOG = """\
examples:
  edge-run out/x86-int8 --source photo.jpg
  edge-run out/x86-int8 --source photos/ --jsonl results.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run",
        description="Run an edge-opt bundle: preprocess, infer and decode as its manifest says.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by `edge-opt export`")
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--jsonl", type=Path, help="also write one JSON line per image to this file")
    p.add_argument("--max-frames", type=int, help="stop after this many images")
    p.add_argument("--threads", type=int, help="override the profile's thread count")
    return p


def _images(source: str) -> list[Path]:
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise SourceError(f"folder {path} has no images")
    raise SourceError(f"source {source} not found; give an image file or a folder of images")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import edge_sdk

        model = edge_sdk.load(args.bundle, threads=args.threads)
        files = _images(args.source)[: args.max_frames]
        out = args.jsonl.open("w") if args.jsonl else None
        try:
            for path in files:
                result = model.predict(path)
                record = {"source": str(path), **result.to_dict()}
                print(json.dumps(record))
                if out:
                    out.write(json.dumps(record) + "\n")
        finally:
            if out:
                out.close()
    except EdgeError as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
