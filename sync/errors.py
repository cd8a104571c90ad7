"""The exception tree of ``sync``: one base class so callers can catch everything we raise."""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error raised by the ``sync`` package."""


class ConfigError(SyncError):
    """A setting is missing, malformed or inconsistent (raised before any network traffic)."""


class PayloadError(SyncError):
    """``publish()`` was given something that cannot be sent as JSON, or a bad stream name."""


class OutboxError(SyncError):
    """The on-disk outbox cannot store a message (disk full, corrupt file, wrong schema)."""


class ConnectError(SyncError):
    """The broker could not be reached or refused us; the message says which and why."""


class AuthError(ConnectError):
    """The broker refused the credentials (bad username/password or not authorised)."""


class TlsError(ConnectError):
    """The TLS handshake failed: untrusted or mismatched certificate, or a refused client cert."""


class CommandTimeout(SyncError):
    """A command sent to a device got no acknowledgement in time."""
