"""JSON-lines sink: one line per frame (results + that frame's events), or one per event."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edge_sdk.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from edge_sdk.events import Event
    from edge_sdk.pipeline import FrameResult, StreamInfo


class JsonlSink(Sink):
    """`events_only=True` writes only events (track started/ended, zone entered/left, line
    crossed), one per line: the compact file a dashboard or an alarm rule wants."""

    def __init__(self, path: str | Path, *, events_only: bool = False) -> None:
        self.path = Path(path)
        self.events_only = events_only
        self.name = f"{'events' if events_only else 'jsonl'} {self.path.name}"
        if not self.path.parent.is_dir():
            raise SinkError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        # Writable? Checked now, but the file is emptied (or created) only once the run starts
        # (`open`): a run that fails to start, a mistyped source, leaves the last run's
        # results alone and no empty file behind.
        self._file: TextIO | None = None
        self._opened = False
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise SinkError(f"cannot write {self.path}: folder {self.path.parent} is not "
                            "writable")
        if self.path.exists():
            try:
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"cannot write {self.path}: {exc.strerror}") from None

    def open(self, info: StreamInfo | None = None) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8")
        else:
            self._file.truncate(0)
        self._opened = True

    def write(self, result: FrameResult) -> None:
        if self.events_only:
            self._lines([e.to_dict() for e in result.events])
        else:
            self._lines([result.to_dict()])

    def end(self, events: tuple[Event, ...]) -> None:
        if self.events_only:
            self._lines([e.to_dict() for e in events])
        elif events:
            self._lines([{"end": True, "events": [e.to_dict() for e in events]}])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _lines(self, records: list[dict]) -> None:
        if records:
            if not self._opened:  # written to without a pipeline's open()
                self.open()
            self._file.write("".join(json.dumps(r) + "\n" for r in records))
            self._file.flush()
