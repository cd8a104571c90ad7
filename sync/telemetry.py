"""Health numbers: what the runtime supplies (FPS, latency p95, frame drops, drift) merged
with what the sync client knows (outbox depth, dropped messages, connection)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("sync.telemetry")

TelemetryProvider = Callable[[], Mapping[str, Any]]
"""Called from the sync maintenance thread once per interval; must return quickly."""


class Telemetry:
    """Collects runtime values pushed with ``update()`` or pulled from a provider."""

    def __init__(self, provider: TelemetryProvider | None = None) -> None:
        self._provider = provider
        self._pushed: dict[str, Any] = {}
        self._lock = threading.Lock()

    def set_provider(self, provider: TelemetryProvider | None) -> None:
        self._provider = provider

    def update(self, **values: Any) -> None:
        """Push values (e.g. ``fps=29.7, latency_p95_ms=41.0``); the latest value wins."""
        with self._lock:
            self._pushed.update(values)

    def runtime_values(self) -> dict[str, Any]:
        """Pushed values overlaid by the provider's; a failing provider is reported, not raised."""
        with self._lock:
            values = dict(self._pushed)
        if self._provider is not None:
            try:
                values.update(self._provider())
            except Exception as exc:  # a telemetry bug must not stop the sync client
                log.warning("telemetry provider failed: %r", exc)
                values["telemetry_error"] = f"{type(exc).__name__}: {exc}"
        return {k: _jsonable(v) for k, v in values.items()}


def _jsonable(value: Any) -> Any:
    """Numpy scalars and NaN would break JSON encoding; turn them into plain values."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
