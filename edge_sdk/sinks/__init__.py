"""Where results go: a callback, a JSON-lines file, an annotated video, MQTT, a webhook.

Each sink runs in its own thread behind a bounded queue (`SinkRunner`), so a slow or broken
sink never slows inference. `MqttSink` is imported lazily: it needs `sync` and paho-mqtt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_sdk.sinks.base import Sink, SinkError, SinkRunner, SinkStats
from edge_sdk.sinks.callback import CallbackSink
from edge_sdk.sinks.jsonl import JsonlSink
from edge_sdk.sinks.video import AnnotatedVideoSink
from edge_sdk.sinks.webhook import WebhookSink

if TYPE_CHECKING:
    from edge_sdk.sinks.mqtt import MqttSink


def __getattr__(name: str) -> object:
    if name == "MqttSink":
        from edge_sdk.sinks.mqtt import MqttSink

        return MqttSink
    raise AttributeError(f"module 'edge_sdk.sinks' has no attribute {name!r}")


__all__ = [
    "AnnotatedVideoSink",
    "CallbackSink",
    "JsonlSink",
    "MqttSink",
    "Sink",
    "SinkError",
    "SinkRunner",
    "SinkStats",
    "WebhookSink",
]
