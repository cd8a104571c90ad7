"""Errors of `edge-opt bench`; ToolchainError subclasses, so the CLI prints them in one line."""

from __future__ import annotations

from optimize.errors import ToolchainError


class BenchError(ToolchainError):
    """The inputs cannot be benchmarked as given (not a bundle, mixed tasks, no reference)."""


class DatasetError(ToolchainError):
    """The --data folder is missing, empty, or its labels do not fit the model."""
