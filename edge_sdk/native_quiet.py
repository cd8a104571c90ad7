"""`--quiet` for what native runtimes print themselves: LiteRT's C++ side writes
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to file descriptor 2 when
an interpreter first plans its tensors, past Python's sys.stderr and logging.

The CLIs' --quiet sets EDGE_SDK_QUIET=1 in their environment (so the measuring processes they
start inherit it). Then, around the interpreter's creation only, fd 2 is captured and written
back without that one INFO line: every other line, warnings and errors included, still reaches
stderr, in order. Without the variable nothing is touched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

QUIET_ENV = "EDGE_SDK_QUIET"
DROPPED = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
# fd 2 is the process's: two threads loading models at once must not swap it under each
# other (the second would restore the first one's capture file as stderr for good)
_LOCK = threading.RLock()


def set_quiet() -> None:
    """Called by a CLI given --quiet: this process and the ones it starts drop the lines."""
    os.environ[QUIET_ENV] = "1"


@contextlib.contextmanager
def native_info_dropped() -> Iterator[None]:
    """When quiet, hold back what is written to fd 2 inside the block and write it back
    without the DROPPED lines (also when the block raises)."""
    if os.environ.get(QUIET_ENV) != "1":
        yield
        return
    with _LOCK:
        yield from _dropped()


def _dropped() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                sink.seek(0)
                kept = [line for line in sink.read().splitlines(keepends=True)
                        if line.strip() not in DROPPED]
                data = memoryview(b"".join(kept))
                while data:
                    data = data[os.write(2, data):]
    finally:
        os.close(saved)
