"""Build a paho-mqtt 2.x client from a ``SyncConfig`` and connect it with errors a person
can act on ("bad username or password", "certificate not trusted"), shared by the device
client and ``edge-fleet``."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from sync.config import SyncConfig
from sync.errors import AuthError, ConfigError, ConnectError, SyncError, TlsError

log = logging.getLogger("sync.connection")

# MQTT 3.1.1 CONNACK refusals as paho 2.x reports them (v5-style reason code values).
_AUTH_CODES = {134, 135}  # bad user name or password, not authorized


@dataclass(frozen=True)
class Will:
    """The Last Will: what the broker publishes for us if we vanish without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True


def make_ssl_context(cfg: SyncConfig) -> ssl.SSLContext:
    """Verify the broker with ``ca_file`` (system CAs if unset); present our cert if set."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {cfg.ca_file}: {_why(exc)}") from None
    if cfg.cert_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load client certificate {cfg.cert_file} / key {cfg.key_file}: "
                f"{_why(exc)}"
            ) from None
    return ctx


def build_client(
    cfg: SyncConfig, client_id: str, *, clean_session: bool = True, will: Will | None = None
) -> mqtt.Client:
    """A configured, unconnected client. Set callbacks before ``connect_and_wait``."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        userdata={"errors": []},
    )
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.address.tls:
        client.tls_set_context(make_ssl_context(cfg))
        client.tls_insecure_set(cfg.tls_insecure)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    client.max_inflight_messages_set(cfg.inflight)
    client.connect_timeout = 5.0
    client.on_log = _remember_errors
    return client


def _remember_errors(client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
    # paho reports socket/TLS read errors only through its log; the first one is the cause.
    if level == mqtt.MQTT_LOG_ERR and isinstance(userdata, dict):
        errors = userdata.setdefault("errors", [])
        if len(errors) < 10:
            errors.append(buf)


def connect_and_wait(
    client: mqtt.Client,
    cfg: SyncConfig,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
    connect_options: dict[str, Any] | None = None,
) -> None:
    """Connect and run the loop until CONNACK; raise ``ConnectError``/``AuthError``/``TlsError``.

    ``connect_options`` go to ``client.connect`` (an MQTT 5 client's ``clean_start`` and
    ``properties``, e.g. the console ingest's Receive Maximum).

    The caller's ``on_connect`` (if any) still runs; callbacks must be set beforehand so no
    message queued for a persistent session arrives before its handler.
    """
    addr = cfg.address
    where = addr.url
    result: dict[str, Any] = {}
    user_on_connect = client.on_connect

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        result["rc"] = rc
        if user_on_connect is not None and not rc.is_failure:
            user_on_connect(c, u, flags, rc, props)

    client.on_connect = on_connect
    if addr.tls and cfg.tls_insecure:  # every connect: a setting this weak must stay visible
        log.warning(
            "TLS host-name verification is OFF for %s (tls_insecure): any server with a "
            "certificate from the CA can pose as the broker", where,
        )
    try:
        client.connect(addr.host, addr.port, keepalive=cfg.keepalive, **(connect_options or {}))
        deadline = time.monotonic() + timeout
        while "rc" not in result:
            rc = client.loop(timeout=0.05)
            if "rc" in result:  # a refusing CONNACK also makes loop() report an error
                break
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise _closed_before_connack(client, where)
            if stop is not None and stop.is_set():
                raise ConnectError(f"stopped while connecting to {where}")
            if time.monotonic() > deadline:
                raise ConnectError(
                    f"no answer (CONNACK) from {where} within {timeout:.0f} s: the broker is "
                    "stalled or overloaded"
                )
    except ssl.SSLCertVerificationError as exc:
        _discard(client)
        raise TlsError(
            f"TLS: the certificate of {where} is not trusted ({exc.verify_message}); "
            f"check ca_file ({cfg.ca_file or 'system CAs'}) and the broker's host name"
        ) from None
    except ssl.SSLError as exc:
        _discard(client)
        raise TlsError(f"TLS handshake with {where} failed: {_why(exc)}") from None
    except ConnectionRefusedError:
        _discard(client)
        raise ConnectError(
            f"cannot connect to {where}: connection refused (is the broker running and "
            f"listening on port {addr.port}?)"
        ) from None
    except TimeoutError:
        _discard(client)
        raise ConnectError(f"cannot connect to {where}: timed out") from None
    except OSError as exc:
        _discard(client)
        raise ConnectError(f"cannot connect to {where}: {_why(exc)}") from None
    except ConnectError:
        _discard(client)
        raise
    finally:
        client.on_connect = user_on_connect
    rc = result["rc"]
    if rc.is_failure:
        _discard(client)
        if rc.value in _AUTH_CODES:
            who = f"user {cfg.username!r}" if cfg.username else "no username given"
            raise AuthError(f"{where} refused the connection: {rc} ({who})")
        raise ConnectError(f"{where} refused the connection: {rc}")


def _closed_before_connack(client: mqtt.Client, where: str) -> ConnectError:
    errors = (client.user_data_get() or {}).get("errors") or ["connection closed"]
    detail = errors[0]
    if "CERTIFICATE" in detail.upper() or "SSL" in detail.upper():
        return TlsError(
            f"TLS: {where} closed the connection during the handshake, most likely because "
            f"it refused our client certificate ({detail})"
        )
    return ConnectError(f"{where} closed the connection before accepting it ({detail})")


def _discard(client: mqtt.Client) -> None:
    """Drop a half-open client's socket now rather than when it is garbage collected."""
    with contextlib.suppress(Exception):  # best effort on a client that already failed
        client.disconnect()
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


RECONNECT_WAIT = 60.0  # how long the fleet tool waits for a lost broker before giving up


def publish_acked(client: mqtt.Client, topic: str, payload: bytes, *, retain: bool, what: str,
                  then: str, ack_timeout: float = 10.0,
                  reconnect_wait: float = RECONNECT_WAIT) -> None:
    """Publish at QoS 1 and wait for the broker's PUBACK, riding out a lost connection (paho,
    its loop running, reconnects by itself): the fleet tool's one policy for a broker that is
    away, for a deployment and for a bundle's chunk alike. Publishing again after a drop is
    safe: these messages are retained desired state, the same bytes each time. A broker away
    for longer than `reconnect_wait` is one SyncError ending in `then`, what to do next."""
    lost_since: float | None = None
    while True:
        if client.is_connected():
            try:
                info = client.publish(topic, payload, qos=1, retain=retain)
                info.wait_for_publish(ack_timeout)
            except (RuntimeError, ValueError):  # paho: the connection dropped in between
                pass
            else:
                if info.is_published():
                    return
                if client.is_connected():
                    raise SyncError(f"the broker did not acknowledge {what} within "
                                    f"{ack_timeout:.0f} s; {then}")
        now = time.monotonic()
        if lost_since is None:
            lost_since = now
        elif now - lost_since > reconnect_wait:
            raise SyncError(f"lost the broker and it did not come back within "
                            f"{reconnect_wait:.0f} s; {then}")
        time.sleep(0.1)
