"""`Source`: a reader run in its own capture thread, with buffering and reconnection.

- Live sources (camera, stream, or a file with `realtime=True`) keep only the newest
  `buffer_size` frames; older ones are dropped and counted, so results are never stale.
- File and folder sources hand over every frame. With `pace=True` (default) each frame is
  read just before the consumer needs it (see `pacing.Pacer`), so it does not age in a queue:
  a frame read ahead waits a whole inference, and that wait is latency. `pace=False` reads
  ahead a few frames instead.
- A reader that fails (camera unplugged, stream dropped, a read that raises) is reopened with
  backoff; each attempt is reported as a `StatusUpdate`, and the consumer just waits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.errors import EdgeError
from edge_sdk.metrics import StatusUpdate
from edge_sdk.sources.buffer import BoundedQueue
from edge_sdk.sources.pacing import Pacer
from edge_sdk.sources.readers import Reader, reader_for

READ_AHEAD = 4  # frames buffered by an unpaced file source


class Backoff:
    """Reconnect delays: initial, doubling, capped; reset after a successful reconnect."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(frozen=True)
class VideoFrame:
    """One captured frame and where it came from."""

    image: np.ndarray  # BGR, HxWx3 uint8
    index: int  # 0-based position in the stream; live sources count dropped frames too
    timestamp: float  # seconds: position in a file, wall-clock time for live sources
    captured_at: float  # time.perf_counter() when it was read, for capture -> result latency
    source: str  # source name; for a folder, the image file
    prepared: Any = None  # `Source.prepare(image)` when the capture thread ran it, else None
    prepare_ms: float = 0.0  # what that took


@dataclass(frozen=True)
class SourceStats:
    name: str
    live: bool
    frames_read: int
    frames_dropped: int  # overwritten in the buffer before the consumer took them
    reconnects: int
    read_errors: int
    ended: bool
    error: str | None  # why the source gave up, if it did
    skipped: tuple[str, ...] = ()  # files a folder source could not read
    down_since: float | None = None  # wall-clock time it stopped delivering; None: delivering


def run_prepare(prepare: Callable[[np.ndarray], Any], image: np.ndarray) -> tuple[Any, float]:
    """`prepare(image)` and its time in ms; (None, 0) if it raised (the consumer then
    prepares the frame itself and raises the error where its caller sees it)."""
    t0 = time.perf_counter()
    try:
        prepared = prepare(image)
    except Exception:
        return None, 0.0
    return prepared, 0.0 if prepared is None else (time.perf_counter() - t0) * 1e3


def prepare_frame(frame: VideoFrame, prepare: Callable[[np.ndarray], Any]) -> VideoFrame:
    """The frame with `prepare(frame.image)` run on it (in the calling thread)."""
    prepared, ms = run_prepare(prepare, frame.image)
    return replace(frame, prepared=prepared, prepare_ms=ms)


class Source:
    """One interface for every input: `start()`, then `read()` until it returns None."""

    def __init__(
        self,
        reader: Reader,
        *,
        realtime: bool = False,
        buffer_size: int = 1,
        pace: bool = True,
        max_reconnects: int | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        on_status: Callable[[StatusUpdate], None] | None = None,
    ) -> None:
        if max_reconnects is not None and (not isinstance(max_reconnects, int) or
                                           max_reconnects < 0):  # fmt: skip
            raise EdgeError(
                f"max_reconnects must be None or an integer >= 0, got {max_reconnects!r}"
            )
        self.reader = reader
        self.realtime = realtime and not reader.live
        self.live = reader.live or self.realtime
        self.max_reconnects = max_reconnects
        self.on_status = on_status
        # Called on each frame in the capture thread (the pipeline sets the model's
        # preprocessing), so it overlaps with inference of the previous frame. See `_prepare`.
        self.prepare: Callable[[np.ndarray], Any] | None = None
        self._backoff = Backoff(*backoff)
        self.paced = pace and not self.live
        if self.live:
            self._queue: BoundedQueue[VideoFrame] = BoundedQueue(buffer_size, "drop")
        else:
            self._queue = BoundedQueue(1 if self.paced else READ_AHEAD, "wait")
        self._pacer = Pacer() if self.paced else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0
        self._reconnects = 0
        self._read_errors = 0
        self._error: str | None = None
        self._down_since: float | None = None

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def fps(self) -> float | None:
        return self.reader.fps

    def start(self, retry_after: BaseException | None = None) -> Source:
        """Open the reader now (so a wrong path or camera fails here), then start capturing.

        `retry_after`: the error of an open that failed; the capture thread then reopens the
        reader with backoff, as for a camera lost mid-run (one camera of several that is off
        at start-up joins when it comes up)."""
        if self._thread is None:
            if retry_after is None:
                self.reader.open()
            self._thread = threading.Thread(target=self._run, args=(retry_after,),
                                            name="edge-capture", daemon=True)  # fmt: skip
            self._thread.start()
        return self

    def prefetch(self) -> None:
        """Paced sources: start reading the next frame now (the consumer will want it soon)."""
        if self._pacer is not None:
            self._pacer.prefetch()

    def read(self, timeout: float | None = None) -> VideoFrame | None:
        """The next frame; None when the source has ended; `queue.Empty` on timeout."""
        if self._pacer is None:
            return self._queue.get(timeout)
        asked = time.perf_counter()
        self._pacer.prefetch()
        frame = self._queue.get(timeout)
        if frame is not None:
            self._pacer.taken(asked, time.perf_counter())
        return frame

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._pacer is not None:
            self._pacer.stop()
        self._queue.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def stats(self) -> SourceStats:
        return SourceStats(
            name=self.name, live=self.live, frames_read=self._index,
            frames_dropped=self._queue.dropped, reconnects=self._reconnects,
            read_errors=self._read_errors, ended=self._queue.closed, error=self._error,
            skipped=tuple(getattr(self.reader, "skipped", ())), down_since=self._down_since,
        )  # fmt: skip

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- capture thread ----------------------------------------------------------------------

    def _prepare(self, image: np.ndarray) -> tuple[Any, float]:
        """`prepare(image)` and its time in ms, or (None, 0) to leave it to the consumer.

        Every frame of a file is consumed, so it is always prepared here. A live frame only
        while the consumer keeps up (nothing waiting in the buffer): a camera faster than the
        model would otherwise have frames prepared that are then dropped unseen.
        """
        if self.prepare is None or (self.live and len(self._queue)):
            return None, 0.0
        return run_prepare(self.prepare, image)

    def _run(self, retry_after: BaseException | None = None) -> None:
        started = time.perf_counter()
        try:
            if retry_after is not None and not self._reconnect(retry_after):
                return
            turn_taken = False  # after a reconnect, retry the read the consumer asked for
            while not self._stop.is_set():
                if not turn_taken and not self._wait_for_turn(started):
                    break
                turn_taken = True
                t0 = time.perf_counter()
                try:
                    item = self.reader.read()
                except Exception as exc:  # a driver or decoder failure: reconnect, don't die
                    self._read_errors += 1
                    if not self._reconnect(exc):
                        break
                    continue
                if item is None:
                    short = getattr(self.reader, "ended_early", None)
                    if short:
                        self._error = f"{self.name}: {short}"
                        self._report("failed", self._error)
                    else:
                        self._report("ended",
                                     f"{self.name}: end of stream after {self._index} frames")
                    break
                image, timestamp = item
                captured = time.perf_counter()
                prepared, prepare_ms = self._prepare(image)
                if self._pacer is not None:  # the frame is ready once prepared
                    self._pacer.read_took(time.perf_counter() - t0)
                frame = VideoFrame(image, self._index, timestamp, captured,
                                   self.reader.current, prepared, prepare_ms)  # fmt: skip
                self._index += 1
                turn_taken = False
                if not self._queue.put(frame):
                    break
        finally:
            self._queue.close()
            self.reader.close()

    def _wait_for_turn(self, started: float) -> bool:
        """Before a read: wait to be asked (paced file), or for the frame's time (realtime)."""
        if self._pacer is not None:
            return self._pacer.wait_turn() and not self._stop.is_set()
        if self.realtime and self.reader.fps:
            due = started + self._index / self.reader.fps
            delay = due - time.perf_counter()
            return delay <= 0 or not self._stop.wait(delay)
        return True

    def _reconnect(self, exc: BaseException) -> bool:
        """Reopen with backoff until it works, the retries run out, or stop(); True if open.
        Attempts 1-9 are said, then the 10th, 20th, ... 100th, 200th, ...: a camera dead all
        weekend said so every 10 s, 8640 lines a day, burying everything else in the log."""
        reason = str(exc) or type(exc).__name__
        attempts = 0
        self._down_since = time.time()
        while not self._stop.is_set():
            if self.max_reconnects is not None and attempts >= self.max_reconnects:
                self._error = f"{self.name}: gave up after {attempts} reconnect attempts: {reason}"
                self._report("failed", self._error)
                return False
            delay = self._backoff.next()
            where = reason if self.name in reason else f"{self.name}: {reason}"
            if attempts + 1 < 10:
                self._report("reconnecting", f"{where}; reopening in {delay:.1f} s")
            elif _worth_saying(attempts + 1):
                down = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._down_since))
                self._report("reconnecting", f"{where}; still down since {down}, "
                                             f"{attempts} attempts so far; reopening every "
                                             f"{delay:.1f} s (said again at attempt "
                                             f"{_next_said(attempts + 1)})")  # fmt: skip
            if self._stop.wait(delay):
                return False
            attempts += 1
            try:
                self.reader.open()
            except Exception as open_exc:  # still unplugged: try again later
                reason = str(open_exc) or type(open_exc).__name__
                continue
            self._reconnects += 1
            self._down_since = None
            self._backoff.reset()
            self._report("reconnected", f"{self.name}: reopened after {attempts} attempt(s)")
            return True
        return False

    def _report(self, kind: str, message: str) -> None:
        if self.on_status is not None:
            with contextlib.suppress(Exception):  # must not kill the capture thread
                self.on_status(StatusUpdate.now("source", kind, message))


def _worth_saying(attempt: int) -> bool:
    """10, 20, ..., 90, 100, 200, ...: one significant digit."""
    while attempt % 10 == 0:
        attempt //= 10
    return attempt < 10


def _next_said(attempt: int) -> int:
    """The attempt after `attempt` (one significant digit) that is said: 90 -> 100, 200 -> 300."""
    scale = 10 ** (len(str(attempt)) - 1)
    return (attempt // scale + 1) * scale


def open_source(spec: int | str | Path | Source, **options: Any) -> Source:
    """A `Source` for a camera index, video file, stream URL, image or folder of images.

    Options are `Source`'s keyword arguments (realtime, buffer_size, pace, max_reconnects,
    backoff, on_status). The source is opened by `start()`, not here.
    """
    if isinstance(spec, Source):
        return spec
    return Source(reader_for(spec), **options)


__all__ = ["Source", "SourceStats", "VideoFrame", "open_source"]
