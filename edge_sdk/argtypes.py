"""argparse types shared by edge-run and edge-opt: a bad count is a usage error (exit 2) that
names the flag, not a failure deep inside numpy or the runtime."""

from __future__ import annotations

import argparse


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """Counts (--runs, --calib-size, --max-batch): 0 or less is no count."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    """Counts that may be zero (--guard-tries 0 judges without searching)."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
