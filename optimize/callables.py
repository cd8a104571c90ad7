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
        raise error(f"importing {role} file {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(folder)
    return module
