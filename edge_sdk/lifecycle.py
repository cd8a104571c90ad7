"""The run/start/join/stop surface that Pipeline and MultiPipeline share.

A subclass provides `_open()` (open sources and sinks; errors raise here), `_loop()` (yield
results until the end), `_background()` (consume `_loop()` in the worker thread), `_close()`
and `_halt_inputs()` (stop capturing); it sets `_stop`, `_thread`, `_opened`, `_looping` and
`_closed` in its constructor.

Waiting for the background thread goes through an Event, never `Thread.join` with a timeout:
on CPython before 3.12, a Ctrl-C landing in such a join can mark the still-running thread as
finished, so a `stop()` after it returned at once and the process exited with the sinks
unclosed (an MP4 without its index, unplayable) and OpenVINO's threads aborting the exit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from edge_sdk.metrics import MetricsSnapshot


class Lifecycle:
    thread_name = "edge-infer"

    _stop: threading.Event
    _thread: threading.Thread | None
    _opened: bool
    _looping: bool
    _closed: bool

    def __iter__(self) -> Iterator[Any]:
        """Process frames in the calling thread, yielding each result (sinks get it too)."""
        self._open()
        return self._loop()

    def run(self) -> MetricsSnapshot:
        """Process every source to its end in the calling thread; returns the final metrics."""
        for _ in self:
            pass
        return self.metrics()

    def start(self):
        """Run in a background thread; a source that cannot be opened raises here."""
        self._open()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run_background, name=self.thread_name,
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def _run_background(self) -> None:
        try:
            self._background()
        finally:
            self._finished.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a background run to end (sources exhausted, max_frames, stop()); safe to
        interrupt with Ctrl-C (see the module's docstring)."""
        if self._thread is None:
            return True
        if not self._finished.wait(timeout):
            return False
        self._thread.join()  # it has set the event: only its last instructions remain
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop early: pending sink results are discarded, sinks are ended and closed."""
        self._stop.set()
        self._halt_inputs()
        if self._thread is not None and self._thread is not threading.current_thread():
            self.join(timeout)
        elif self._opened and not self._looping:
            self._close()  # opened but never iterated: release the sources and sinks now

    @property
    def running(self) -> bool:
        return self._opened and not self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # provided by the subclass
    def _open(self) -> None:
        raise NotImplementedError

    def _loop(self) -> Iterator[Any]:
        raise NotImplementedError

    def _background(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _halt_inputs(self) -> None:
        raise NotImplementedError

    def metrics(self) -> MetricsSnapshot:
        raise NotImplementedError
