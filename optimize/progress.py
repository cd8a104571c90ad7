"""Progress display for long steps on stderr: tqdm bars on a terminal, plain lines in a log.

An export with calibration and the accuracy guard's search takes minutes; run under nohup, CI
or with stderr sent to a file it must still say what it is doing, so stage and note lines are
written whenever progress is on (not `-q`), and only the bars (carriage returns) need a
terminal. In a log every line is whole when written, so a warning from a library can come
between two lines but never inside one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm


class Progress:
    """One place that decides how progress is shown, so steps just call `bar()` / `stage()`."""

    def __init__(self, enabled: bool = True, terminal: bool | None = None) -> None:
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._open: object | None = None  # the stage whose "desc ..." awaits its time

    def _write(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=sys.stderr, flush=True)

    def _close_line(self) -> None:
        """End a terminal line left open for a stage's time (its stage then writes a full
        line when it ends)."""
        if self._open is not None:
            self._write("")
            self._open = None

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[tqdm]:
        """A counted step: a tqdm bar on a terminal; elsewhere a stage's lines, no bar."""
        if not (self.enabled and self.terminal):
            with self.stage(desc), tqdm(total=total, disable=True) as silent:
                yield silent
            return
        self._close_line()
        with tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr,
                  dynamic_ncols=True) as shown:
            yield shown

    def note(self, text: str) -> None:
        """A line of its own under the running stage (or between stages)."""
        if self.enabled:
            self._close_line()
            self._write(f"    {text}")

    @contextlib.contextmanager
    def stage(self, desc: str) -> Iterator[None]:
        """A step with no natural count: its name when it starts, how long it took when it
        ends. A terminal shows both on one line unless something came in between."""
        if not self.enabled:
            yield
            return
        self._close_line()
        token = object()
        if self.terminal:
            self._write(f"  {desc} ...", end="")
            self._open = token
        else:
            self._write(f"  {desc} ...")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._close_line()  # the error that follows says what failed
            raise
        took = f"{time.perf_counter() - start:.1f}s"
        if self._open is token:
            self._write(f" {took}")
            self._open = None
        else:
            self._close_line()
            self._write(f"  {desc} ... {took}")
