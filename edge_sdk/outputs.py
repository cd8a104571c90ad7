"""Output files that would destroy input: refused before anything is opened.

`edge-run --source clip.avi --save clip.avi` once overwrote the video it was reading (29 of
180 frames processed, exit 0); `--jsonl x --events x` interleaved two writers into one file;
an output inside the bundle folder would overwrite the model or its manifest. Paths are
compared resolved (links followed) and, where both exist, by identity (hard links).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edge_sdk.errors import EdgeError


def check_outputs(outputs: Iterable[tuple[str, Path]], sources: Iterable[object],
                  bundle: Path | None = None) -> None:
    """EdgeError if an output is a source file, another output, or inside the bundle folder.

    `outputs`: (flag, path) pairs; `sources`: source specs (only existing files count).
    """
    seen: dict[Path, str] = {}
    inputs = [Path(str(s)) for s in sources if isinstance(s, (str, Path)) and _is_file(s)]
    root = _resolved(bundle) if bundle is not None else None
    for flag, path in outputs:
        where = _resolved(path)
        if where in seen:
            raise EdgeError(f"{flag} {path} is also the file of {seen[where]}; give each output "
                            "its own file")
        seen[where] = f"{flag}"
        for source in inputs:
            if where == _resolved(source) or _same_file(path, source):
                raise EdgeError(f"{flag} {path} is the source being read; writing it would "
                                "destroy the input: choose another output file")
        if root is not None and where.is_relative_to(root):
            raise EdgeError(f"{flag} {path} is inside the bundle folder {bundle}; write outputs "
                            "elsewhere (the bundle's files are checked against its manifest)")


def _resolved(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _is_file(spec: object) -> bool:
    try:
        return Path(str(spec)).is_file()
    except (OSError, ValueError):
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False
