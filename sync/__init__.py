"""Durable MQTT sync for edge devices: publish never blocks, nothing accepted is lost.

    from sync import MqttSync
    s = MqttSync(broker="mqtt://127.0.0.1:1883", device_id="cam-01", outbox="outbox.db")
    s.start()
    s.publish("detections", {"label": "person", "score": 0.91})
    s.close()

See sync/README.md for the delivery guarantee, topics, security and the ``edge-fleet`` tool.
"""

from __future__ import annotations

from sync.client import MqttSync, Priority, Receipt, SyncState
from sync.commands import Command, CommandAck
from sync.config import SyncConfig, load_config
from sync.envelope import Envelope, decode_envelope
from sync.errors import (
    AuthError,
    CommandTimeout,
    ConfigError,
    ConnectError,
    OutboxError,
    PayloadError,
    SyncError,
    TlsError,
)

__all__ = [
    "AuthError",
    "Command",
    "CommandAck",
    "CommandTimeout",
    "ConfigError",
    "ConnectError",
    "Envelope",
    "MqttSync",
    "OutboxError",
    "PayloadError",
    "Priority",
    "Receipt",
    "SyncConfig",
    "SyncError",
    "SyncState",
    "TlsError",
    "decode_envelope",
    "load_config",
]
