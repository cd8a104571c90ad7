"""Decoders that travel inside a bundle as Python code (`edge-opt export --decoder file.py:Name`).

A bundle is untrusted input, and its code is the most dangerous part of it, so:

- `edge_sdk.load(bundle)` refuses a bundle that carries code; `load(bundle, trust_code=True)`
  (`edge-run --trust-bundle-code`) runs it. Code is never run by accident.
- The file is named in the manifest's `files["decoder"]` (the bundle path rule applies: inside
  the bundle folder, no `..`, no symlink out) and `task.decoder` is `bundle:<path>:<Name>`.
- The bytes that are hashed are the bytes that run: the file is read once, its sha256 checked
  against the manifest, and those bytes compiled and executed. Nothing is read from a
  `__pycache__` in the bundle and nothing is written there, and the bundle folder is not put on
  `sys.path` (the file may import edge_sdk, numpy and OpenCV, not its neighbours).
- Import, attribute lookup, construction and each call are guarded: a failure is one
  `DecoderCodeError` line that names the file, never a traceback.

A process that registered the decoder itself (the toolchain, from the user's own file) may
load bundles carrying the same file (same sha256) without `trust_code`: no bundle code runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_sdk.decoders import Decoder, register_decoder
from edge_sdk.errors import BundleError, EdgeError, HashMismatchError, ManifestError
from edge_sdk.results import Classification, Detections, RawOutputs, Segmentation

PREFIX = "bundle:"
FILE_KEY = "decoder"  # the manifest's files key
BUNDLE_FILE = "decoder.py"  # what edge-opt names the copy
MAX_CODE_BYTES = 1 << 20
TASKS = ("classify", "detect", "segment", "pose", "raw")
RESULTS = (Classification, Detections, RawOutputs, Segmentation)
TRUST_HINT = ("if you trust whoever built it, pass --trust-bundle-code (edge-run, edge-opt "
              "bench) or trust_code=True (edge_sdk.load)")

# name -> sha256 of the code registered under it in this process
_REGISTERED: dict[str, str] = {}
# name -> the source file the toolchain copies into bundles (set by register_code_decoder)
_SOURCES: dict[str, Path] = {}


class DecoderCodeError(BundleError):
    """A decoder shipped as code cannot be imported, built or run."""


def bundle_decoder_name(class_name: str, path: str = BUNDLE_FILE) -> str:
    return f"{PREFIX}{path}:{class_name}"


def split_name(name: str) -> tuple[str, str] | None:
    """`bundle:decoder.py:Name` -> ("decoder.py", "Name"); None for a built-in decoder."""
    if not name.startswith(PREFIX):
        return None
    path, sep, attr = name[len(PREFIX):].rpartition(":")
    if not sep or not path.endswith(".py") or not attr.isidentifier():
        raise ManifestError(f"task.decoder {name!r}: a bundle decoder is named "
                            "bundle:<file>.py:<Name>; re-export the bundle")
    return path, attr


def is_code_decoder(name: str) -> bool:
    return name.startswith(PREFIX)


def source_of(name: str) -> Path | None:
    """The file a code decoder was registered from (for edge-opt to copy into bundles)."""
    return _SOURCES.get(name)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_code(path: Path, what: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_CODE_BYTES + 1)
    if len(data) > MAX_CODE_BYTES:
        raise DecoderCodeError(f"{what} is larger than {MAX_CODE_BYTES >> 20} MB; a decoder is "
                               "one small Python file")
    return data


def import_code(data: bytes, path: Path, what: str, module_name: str):
    """Execute `data` (the bytes of `path`, already checked) as a fresh module."""
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[module_name] = module  # dataclasses and typing look the module up here
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - trusted by caller
    except BaseException as exc:  # the code may raise anything, even SystemExit
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise DecoderCodeError(f"importing {what} failed: {type(exc).__name__}: "
                               f"{_first_line(exc)} (it must import on its own: edge_sdk, "
                               "numpy and OpenCV, not files next to it)") from None
    return module


def factory_from(module, attr: str, what: str) -> Callable:
    factory = getattr(module, attr, None)
    if factory is None:
        raise DecoderCodeError(f"{what} has no {attr!r}; name a class or factory defined in it")
    if not callable(factory):
        raise DecoderCodeError(f"{what}: {attr!r} is a {type(factory).__name__}, not a class or "
                               "factory; it must be callable as Name(labels=..., **params)")
    return factory


def register_code_decoder(name: str, factory: Callable, sha256: str,
                          source: Path | None = None) -> None:
    """Register `factory` under `name`, wrapped so its failures are one clear error."""
    register_decoder(name)(_guarded_factory(name, factory))
    _REGISTERED[name] = sha256
    if source is not None:
        _SOURCES[name] = source


def prepare(folder: Path, manifest, trust_code: bool) -> None:
    """Make sure the decoder a bundle names is registered, importing the bundle's code only
    with `trust_code` (after its hash check). Built-in decoders need nothing."""
    parts = split_name(manifest.task.decoder)
    entry = manifest.files.get(FILE_KEY)
    if parts is None:
        return
    if entry is None or entry.path != parts[0]:
        raise ManifestError(f"task.decoder {manifest.task.decoder!r} names code the bundle "
                            f"does not list in files[{FILE_KEY!r}]; re-export the bundle")
    path = manifest.path_of(folder, FILE_KEY)  # the bundle path rule
    what = f"decoder file {entry.path} in {folder}"
    data = read_code(path, what)
    digest = sha256_bytes(data)
    if digest != entry.sha256:
        raise HashMismatchError(f"{entry.path} in {folder} does not match the sha256 in "
                                "manifest.json: the file was changed or damaged; copy the "
                                "bundle again or re-export it")
    name = manifest.task.decoder
    if _REGISTERED.get(name) == digest:
        return  # this process registered the very same code itself
    if not trust_code:
        raise BundleError(f"{folder} carries Python code ({entry.path}, decoder "
                          f"{parts[1]!r}) and code from a bundle is not run by default; "
                          + TRUST_HINT)
    module = import_code(data, path, what, f"_edge_bundle_decoder_{digest[:16]}")
    register_code_decoder(name, factory_from(module, parts[1], what), digest)


def _guarded_factory(name: str, factory: Callable) -> Callable[..., Decoder]:
    def build(labels: tuple[str, ...] = (), **params) -> Decoder:
        try:
            decoder = factory(labels=labels, **params)
        except EdgeError:
            raise
        except Exception as exc:  # user code may raise anything
            raise DecoderCodeError(f"decoder {name}: building it failed: "
                                   f"{type(exc).__name__}: {_first_line(exc)}") from None
        if not callable(decoder):
            raise DecoderCodeError(f"decoder {name}: {name.rpartition(':')[2]}(labels=..., "
                                   f"**params) returned a {type(decoder).__name__}, not a "
                                   "callable (outputs, transform) -> result")
        task = getattr(decoder, "task", getattr(factory, "task", None))
        if task not in TASKS:
            raise DecoderCodeError(f"decoder {name}: its task attribute is {task!r}; set it "
                                   f"to one of {', '.join(TASKS)}")
        return UserDecoder(name, decoder, task)

    build.task = getattr(factory, "task", None)
    return build


class UserDecoder:
    """A user's decoder with its errors made clear; attributes pass through (thresholds)."""

    def __init__(self, name: str, inner: Callable, task: str) -> None:
        self._name, self._inner, self.task = name, inner, task

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # never recurse before __init__ ran (copy, pickle)
            raise AttributeError(attr)
        return getattr(self._inner, attr)

    def __call__(self, outputs: list[np.ndarray], transform):
        try:
            result = self._inner(outputs, transform)
        except EdgeError:
            raise
        except Exception as exc:
            raise DecoderCodeError(f"decoder {self._name} failed on this frame: "
                                   f"{type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(result, RESULTS):
            raise DecoderCodeError(f"decoder {self._name} returned a {type(result).__name__}; "
                                   "it must return edge_sdk Detections, Classification or "
                                   "RawOutputs")
        return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"
