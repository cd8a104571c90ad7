"""Silence the chatter of third-party converters (logs, progress bars, advice on stdout).

Exporters, quantizers and converters print for their own developers; edge-opt shows its own
progress and reports, so their output is swallowed here, in one place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

LOGGERS = ("", "torch.onnx", "torch.export", "onnxscript", "nncf", "openvino")


@contextlib.contextmanager
def quiet():
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
