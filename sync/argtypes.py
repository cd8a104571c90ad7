"""argparse types for edge-fleet's numeric flags: a bad value is a usage error (exit 2) that
names the flag, not a wait that never happens, a "no answer within -5 s" or a traceback.
edge_sdk.argtypes has the same count type; edge-fleet keeps its own so that `devices`, `send`
and `tail` start without importing edge_sdk (its runtimes take a second to load)."""

from __future__ import annotations

import argparse
import math

MAX_SECONDS = 365 * 86400  # a year; more overflows thread waits (and means "forever": omit it)


def seconds(text: str) -> float:
    """argparse type for durations: above 0, finite, at most a year (NaN and inf refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"must be above 0 and at most a year ({MAX_SECONDS} s), got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts (tail --count N): below 1 is no number of messages."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
