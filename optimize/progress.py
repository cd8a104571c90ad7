"""Progress display for long steps (tqdm on stderr; silent when asked or not a terminal)."""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm import tqdm


class Progress:
    """One place that decides how progress is shown, so steps just call `bar()` / `stage()`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr,
                    disable=not self.enabled, dynamic_ncols=True)

    def note(self, text: str) -> None:
        """A line under the running stage (its time then ends this line)."""
        if self.enabled:
            print(f"\n    {text}", end="", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, desc: str):
        """A step with no natural count: show its name, then how long it took."""
        start = time.perf_counter()
        if self.enabled:
            print(f"  {desc} ...", end="", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            if self.enabled:
                print(f" {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
