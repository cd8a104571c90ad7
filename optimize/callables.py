"""Load a user's function given as `file.py:fn` or `package.module:fn` (model factories,
fine-tune hooks), with errors that say which flag and what to fix."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from optimize.errors import ToolchainError


def load_callable(spec: str, role: str, error: type[ToolchainError],
                  expected: str) -> Callable:
    """`role` names it in messages ("model factory"); `expected` says what fn must do."""
    target, sep, func_name = spec.rpartition(":")
    if not sep or not target or not func_name.isidentifier():
        raise error(f"{role} {spec!r}: give it as file.py:function or package.module:function")
    if target.endswith(".py"):
        module = _import_file(Path(target), spec, role, error)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise error(f"cannot import {target!r} for the {role} ({exc}); is the package "
                        "installed or on PYTHONPATH?") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise error(f"{target} has no callable {func_name!r} for the {role}; it must be "
                    f"{expected}")
    return fn


def _import_file(path: Path, spec: str, role: str, error: type[ToolchainError]):
    if not path.is_file():
        raise error(f"{role} file {path} not found; check the path in {spec!r}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    module_spec = importlib.util.spec_from_file_location(f"_edge_opt_user_{digest}", path)
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code may raise anything while importing
        raise error(f"importing {role} file {path} failed: {user_error_text(exc)}") from None
    finally:
        sys.path.remove(folder)
    return module


WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def user_error_text(exc: Exception) -> str:
    """What the user's code raised, as 'Type: message' on one line. torch.load's refusal of a
    whole pickled model is a dozen lines of advice, one of which (weights_only=False) runs the
    file's code: said here with when that is safe. Other messages are joined (load_state_dict
    names the missing keys after its first line)."""
    text = " ".join(str(exc).split())[:300]
    if WEIGHTS_ONLY_REFUSAL in str(exc):
        text = ("torch.load refused a whole pickled model (weights_only=True, since unpickling "
                "can run code); load a state_dict into your class, or pass weights_only=False "
                "only for a file you trust")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_decoder_spec(text: str) -> bool:
    """`file.py:Name` or `pkg.mod:Name` (a built-in decoder name has no colon)."""
    return ":" in text and not text.startswith("bundle:")


def register_user_decoder(spec: str) -> tuple[str, str | None]:
    """`--decoder file.py:Name` (or pkg.mod:Name): import the file exactly as a device will
    (on its own, from its bytes), register it under the bundle name `bundle:decoder.py:Name`
    with its sha256 and source (write_bundle copies it), and return (name, its task)."""
    from edge_sdk.decoders.code import (
        DecoderCodeError,
        bundle_decoder_name,
        factory_from,
        import_code,
        read_code,
        register_code_decoder,
        sha256_bytes,
    )

    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ToolchainError(f"--decoder {spec!r}: give a built-in name, file.py:Name or "
                             "package.module:Name")
    path = _decoder_file(target, spec)
    what = f"decoder file {path} (from --decoder {spec})"
    try:
        data = read_code(path, what)
        digest = sha256_bytes(data)
        module = import_code(data, path, what, f"_edge_opt_decoder_{digest[:16]}")
        factory = factory_from(module, attr, what)
    except DecoderCodeError as exc:
        raise ToolchainError(str(exc)) from None
    name = bundle_decoder_name(attr)
    register_code_decoder(name, factory, digest, source=path.resolve())
    task = getattr(factory, "task", None)
    return name, task if isinstance(task, str) else None


def _decoder_file(target: str, spec: str) -> Path:
    """The one .py file a decoder spec names (a bundle carries exactly that file)."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ToolchainError(f"decoder file {path} not found; check the path in --decoder "
                                 f"{spec!r}")
        return path
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        found, why = None, f" ({exc})"
    else:
        why = ""
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise ToolchainError(f"cannot find module {target!r} for --decoder {spec!r}{why}; is "
                             "the package installed or on PYTHONPATH? (or give file.py:Name)")
    if found.submodule_search_locations is not None:
        raise ToolchainError(f"--decoder {spec!r}: {target} is a package; name the module that "
                             "defines the decoder (pkg.module:Name), a bundle carries one file")
    return Path(found.origin)
