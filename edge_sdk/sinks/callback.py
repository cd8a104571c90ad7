"""The simplest sink: call a function with each FrameResult (in the sink's own thread)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_sdk.sinks.base import Sink

if TYPE_CHECKING:
    from edge_sdk.pipeline import FrameResult


class CallbackSink(Sink):
    def __init__(self, fn: Callable[[FrameResult], object], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callback")

    def write(self, result: FrameResult) -> None:
        self.fn(result)
