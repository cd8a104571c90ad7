"""Toolchain errors. They derive from edge_sdk's EdgeError so one `except` serves every CLI."""

from __future__ import annotations

from edge_sdk.errors import EdgeError


class ToolchainError(EdgeError):
    """A user-fixable problem in an edge-opt run; the message says what to do."""


class ModelSourceError(ToolchainError):
    """The source model is missing, corrupt, or does not accept the given input shape."""


class CalibrationError(ToolchainError):
    """Calibration data is missing, empty or unreadable."""


class QuantizationError(ToolchainError):
    """A precision cannot be produced for this model (e.g. nothing can be 4-bit)."""
