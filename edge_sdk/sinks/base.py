"""The sink contract and the runner that keeps a sink from ever stalling inference.

A sink gets every processed frame in its own thread. `SinkRunner` puts a bounded queue in
front of it: with the `drop` policy a slow sink loses its oldest pending results (counted),
with `wait` the pipeline waits for it (offline processing of a file, where every frame
counts). An exception from a sink is caught, counted and reported, and the next frame is
offered as usual; a sink that cannot even open is reported and skipped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_sdk.errors import EdgeError
from edge_sdk.metrics import MetricsSnapshot, StatusUpdate
from edge_sdk.sources.buffer import BoundedQueue

if TYPE_CHECKING:
    from edge_sdk.events import Event
    from edge_sdk.pipeline import FrameResult, StreamInfo


class SinkError(EdgeError):
    """A sink's settings are wrong (e.g. an output folder that does not exist)."""


class Sink:
    """Override `write`; the other hooks are optional. All run in the sink's own thread."""

    name = "sink"

    def open(self, info: StreamInfo) -> None:
        """Called once before the first frame."""

    def write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def end(self, events: tuple[Event, ...]) -> None:
        """The stream is over; `events` close the tracks still open (track_ended, zone_left)."""

    def on_metrics(self, snapshot: MetricsSnapshot) -> None:
        """About once a second: the pipeline's latest metrics (e.g. for telemetry)."""

    def close(self) -> None:
        """Release files and connections; called last, even after errors."""

    def losses(self) -> tuple[int, int, str | None]:
        """(failed, dropped, last error) of what this sink took but could not deliver later
        on its own (a webhook's sender thread); the runner counts them with its own."""
        return 0, 0, None


def sink_list(sinks: object) -> list[Sink]:
    """`sinks` as a list: one sink alone is taken as a list of one; anything without a
    `write` method is an EdgeError here, not an AttributeError in the sink thread later."""
    if callable(getattr(sinks, "write", None)):
        return [sinks]  # type: ignore[list-item]
    try:
        items = list(sinks)  # type: ignore[call-overload]
    except TypeError:
        raise EdgeError(f"sinks must be a list of sinks, got {type(sinks).__name__}") from None
    for item in items:
        if not callable(getattr(item, "write", None)):
            raise EdgeError(f"sinks: {item!r} is not a sink (a sink has a write(result) "
                            "method; see edge_sdk.sinks)")
    return items


@dataclass(frozen=True)
class SinkStats:
    name: str
    written: int
    dropped: int  # results discarded because the sink's queue was full
    errors: int  # exceptions raised by the sink
    last_error: str | None
    failed: bool  # the sink could not open and was skipped


class SinkRunner:
    """One sink, its bounded queue and its thread."""

    def __init__(
        self,
        sink: Sink,
        queue_size: int = 64,
        policy: str = "drop",
        on_status: Callable[[StatusUpdate], None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)
        self._queue: BoundedQueue[FrameResult] = BoundedQueue(queue_size, policy)
        self._on_status = on_status
        self._metrics: MetricsSnapshot | None = None
        self._end_events: tuple[Event, ...] = ()
        self._thread: threading.Thread | None = None
        self._written = 0
        self._errors = 0
        self._last_error: str | None = None
        self._failed = False
        self._drops_reported = False

    def start(self, info: StreamInfo) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(info,), name=f"edge-sink-{self.name}", daemon=True
        )
        self._thread.start()

    def submit(self, result: FrameResult) -> None:
        """Never blocks with the `drop` policy; the oldest pending result goes if full."""
        dropped = self._queue.dropped
        self._queue.put(result)
        if self._queue.dropped > dropped and not self._drops_reported:
            self._drops_reported = True
            self._report("dropping", f"slower than inference; dropping its oldest results "
                                     f"(queue of {self._queue.maxsize})")  # fmt: skip

    def push_metrics(self, snapshot: MetricsSnapshot) -> None:
        self._metrics = snapshot  # only the latest matters; the thread picks it up

    def finish(self, events: tuple[Event, ...] = (), discard: bool = False) -> None:
        """No more frames: deliver the pending ones (or `discard` them), then end and close."""
        self._end_events = tuple(events)
        if discard:
            self._queue.clear()
        self._queue.close()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stats(self) -> SinkStats:
        try:
            failed, dropped, why = self.sink.losses()
        except Exception as exc:  # a user sink's bug must not break the metrics
            failed, dropped, why = 0, 0, f"losses(): {type(exc).__name__}: {exc}"
        return SinkStats(self.name, self._written, self._queue.dropped + dropped,
                         self._errors + failed, self._last_error or why,
                         self._failed)  # fmt: skip

    # -- sink thread -------------------------------------------------------------------------

    def _run(self, info: StreamInfo) -> None:
        if not self._call(self.sink.open, info):
            self._failed = True
            self._report("failed", f"could not open ({self._last_error}); skipping this sink")
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._deliver_metrics()
                continue
            if item is None:
                break
            if not self._failed and self._call(self.sink.write, item):
                self._written += 1
            self._deliver_metrics()
        if not self._failed:
            self._call(self.sink.end, self._end_events)
        self._call(self.sink.close)

    def _deliver_metrics(self) -> None:
        snapshot, self._metrics = self._metrics, None
        if snapshot is not None and not self._failed:
            self._call(self.sink.on_metrics, snapshot)

    def _call(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # a sink must never take the pipeline down
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            if _worth_reporting(self._errors):
                self._report("error", f"{self._last_error} (errors so far: {self._errors})")
            return False

    def _report(self, kind: str, message: str) -> None:
        if self._on_status is not None:
            with contextlib.suppress(Exception):
                self._on_status(StatusUpdate.now(f"sink {self.name}", kind, message))


def _worth_reporting(count: int) -> bool:
    """1st, 10th, 100th, ... error: a broken sink is heard about without flooding the log."""
    while count % 10 == 0:
        count //= 10
    return count == 1
