"""Resolve sync settings once, in one place: flags > config file > environment > defaults.

Scattered ``os.environ.get`` calls in constructors make it impossible to tell which value won;
here every setting is a field of one frozen dataclass and ``load_config`` is the only place
that reads files or the environment.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sync import topics
from sync.errors import ConfigError

ENV_PREFIX = "EDGE_SYNC_"
ENV_CONFIG_FILE = "EDGE_SYNC_CONFIG"
FILE_SECTION = "sync"
_PATH_FIELDS = ("outbox", "ca_file", "cert_file", "key_file")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; credentials in the URL are refused because they leak into ``ps``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(
            f"broker URL {url!r} must start with mqtt:// (plain TCP) or mqtts:// (TLS)"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "put credentials in the config file or EDGE_SYNC_USERNAME/EDGE_SYNC_PASSWORD, "
            "not in the broker URL"
        )
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class SyncConfig:
    """Every setting of the device client and of ``edge-fleet``; validated on creation."""

    broker: str = "mqtt://127.0.0.1:1883"
    device_id: str = ""
    fleet: str = "default"
    outbox: str = "outbox.db"
    outbox_max_bytes: int = 64 * 1024 * 1024
    outbox_damaged: str = "refuse"  # or "quarantine": move a damaged outbox aside, start fresh
    fsync: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    client_id: str | None = None
    keepalive: int = 30
    telemetry_interval: float = 10.0
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0
    inflight: int = 100

    def __post_init__(self) -> None:
        address = parse_broker_url(self.broker)
        for name in ("fleet", "device_id"):
            value = getattr(self, name)
            if value and not topics.is_name(value):  # fullmatch: no "cam-01\n" from a file
                hint = "; strip the spaces or newline around it" if value != value.strip() else ""
                raise ConfigError(
                    f"{name} {value!r} may only use letters, digits, '.', '_' and '-' "
                    f"(at most 64 characters){hint}"
                )
        if not self.fleet:
            raise ConfigError("fleet must not be empty")
        if not address.tls and (self.ca_file or self.cert_file):
            raise ConfigError(
                f"ca_file/cert_file are set but the broker URL {self.broker!r} is plain "
                "mqtt://; use mqtts:// to enable TLS"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("cert_file and key_file must be given together")
        if self.password and not self.username:
            raise ConfigError("password is set but username is not")
        if self.outbox_damaged not in ("refuse", "quarantine"):
            raise ConfigError(
                f"outbox_damaged={self.outbox_damaged!r} must be 'refuse' or 'quarantine'"
            )
        checks = (
            ("outbox_max_bytes", self.outbox_max_bytes >= 4096, "must be at least 4096"),
            ("keepalive", 1 <= self.keepalive <= 65535, "must be between 1 and 65535 s"),
            ("telemetry_interval", self.telemetry_interval > 0, "must be > 0 s"),
            ("backoff_initial", self.backoff_initial > 0, "must be > 0 s"),
            ("backoff_cap", self.backoff_cap >= self.backoff_initial, "must be >= initial"),
            ("inflight", 1 <= self.inflight <= 65535, "must be between 1 and 65535"),
        )
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} {why}")

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)

    def replace(self, **changes: Any) -> SyncConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with the password hidden, for logs and ``--help`` output."""
        out = dataclasses.asdict(self)
        if out["password"]:
            out["password"] = "***"
        return out


_FIELDS = {f.name: f for f in fields(SyncConfig)}


def _convert(name: str, raw: Any, source: str) -> Any:
    """Turn a string from a file or the environment into the field's type."""
    if raw is None or not isinstance(raw, str):
        return raw
    kind = str(_FIELDS[name].type)
    text = raw.strip()
    try:
        if kind.startswith("bool"):
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true/false")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} from {source}: {exc}") from None
    return text if text or "None" not in kind else None


def _from_file(path: Path) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path} is not valid INI: {exc}") from None
    if not parser.has_section(FILE_SECTION):
        raise ConfigError(f"config file {path} has no [{FILE_SECTION}] section")
    values: dict[str, Any] = {}
    for key, raw in parser.items(FILE_SECTION):
        if key not in _FIELDS:
            raise ConfigError(
                f"config file {path}: unknown key {key!r}; known keys: {', '.join(_FIELDS)}"
            )
        value = _convert(key, raw, str(path))
        if key in _PATH_FIELDS and isinstance(value, str) and value:
            # Paths in a file are relative to that file, so the file can move with its certs.
            value = str((path.parent / value).expanduser())
        values[key] = value
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = _convert(name, env[key], key)
    return values


def load_config(
    flags: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> SyncConfig:
    """Merge defaults < environment < config file < flags into one validated ``SyncConfig``.

    ``flags`` entries that are ``None`` are treated as not given. The config file is
    ``config_file`` if given, else ``$EDGE_SYNC_CONFIG`` if set, else none.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = _from_env(env)
    path = config_file or env.get(ENV_CONFIG_FILE) or None
    if path:
        merged.update(_from_file(Path(path).expanduser()))
    for name, value in (flags or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}; known settings: {', '.join(_FIELDS)}")
        if value is not None:
            merged[name] = _convert(name, value, "flags")
    try:
        return SyncConfig(**merged)
    except TypeError as exc:  # a wrong type from a programmatic caller
        raise ConfigError(str(exc)) from None
