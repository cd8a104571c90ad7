"""MQTT sink: results and events to the fleet through `sync.MqttSync` (durable outbox).

`publish()` only appends to the on-disk outbox, so this sink is fast, and a broker that is
down never blocks anything: messages wait in the outbox. Per-frame results go to the
`detections` stream at low priority (the first to go if the outbox fills up), events at high
priority; the pipeline's metrics become the device's telemetry. `sync` (and paho-mqtt) is
imported only when this sink is created, so edge_sdk itself runs without them.

The outbox must never stop the camera: a damaged outbox file is quarantined (moved aside,
reported in the device's status; `outbox_damaged="refuse"` turns that off), and an outbox that
cannot be opened at all makes this sink fail at `open()`, so the pipeline skips it and keeps
inferring. Wrong settings (a bad broker URL) still fail at once, as a user mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_sdk.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from edge_sdk.events import Event
    from edge_sdk.metrics import MetricsSnapshot
    from edge_sdk.pipeline import FrameResult


class MqttSink(Sink):
    def __init__(
        self,
        broker: str | None = None,
        device_id: str | None = None,
        outbox: str | Path | None = None,
        *,
        client: Any = None,
        results_stream: str | None = "detections",
        events_stream: str = "events",
        **settings: Any,
    ) -> None:
        """Give `broker`/`device_id`/`outbox` (and any MqttSync settings) or a ready `client`;
        `results_stream=None` publishes events only. A client passed in is not closed here."""
        self.results_stream = results_stream
        self.events_stream = events_stream
        self._owned = client is None
        try:
            from sync import MqttSync, Priority
        except ImportError as exc:
            raise SinkError(
                f"the MQTT sink needs the sync package and paho-mqtt ({exc.name} is missing): "
                "pip install 'edge-ai-toolkit[device]'"
            ) from None
        from sync import OutboxError

        self._low, self._high = int(Priority.LOW), int(Priority.HIGH)
        self._open_error: str | None = None
        if client is None:
            settings.setdefault("outbox_damaged", "quarantine")
            try:
                client = MqttSync(broker=broker, device_id=device_id, outbox=outbox, **settings)
            except OutboxError as exc:  # the disk's problem, not the user's: skip at open()
                self._open_error = str(exc)
            except Exception as exc:  # sync's own ConfigError etc.: one clear line
                raise SinkError(f"MQTT sink: {exc}") from None
        self.client = client
        self.name = f"mqtt {getattr(client, 'device_id', None) or device_id or ''}".strip()

    def open(self, info: object) -> None:
        if self._open_error is not None:
            raise SinkError(f"MQTT sink: {self._open_error}")
        if self._owned:
            self.client.start()

    def write(self, result: FrameResult) -> None:
        if self.results_stream is not None:
            self.client.publish(self.results_stream, result.to_dict(events=False),
                                priority=self._low)  # fmt: skip
        self._events(result.events)

    def end(self, events: tuple[Event, ...]) -> None:
        self._events(events)

    def on_metrics(self, snapshot: MetricsSnapshot) -> None:
        lat = snapshot.latency.get("latency")
        values: dict[str, Any] = {"fps": round(snapshot.recent_fps, 2),
                                  "drops": sum(snapshot.dropped.values()),
                                  "sources_down": snapshot.sources_down}  # fmt: skip
        if lat is not None:
            values["latency_p95_ms"] = round(lat.p95_ms, 2)
        if snapshot.drift is not None:
            values["drift"] = {"level": snapshot.drift.level,
                               "brightness_psi": snapshot.drift.brightness_psi,
                               "confidence_psi": snapshot.drift.confidence_psi}  # fmt: skip
        self.client.update_telemetry(**values)

    def close(self) -> None:
        if self._owned and self.client is not None:
            self.client.close(drain_timeout=2.0)

    def _events(self, events: tuple[Event, ...]) -> None:
        for event in events:
            self.client.publish(self.events_stream, event.to_dict(), priority=self._high)
