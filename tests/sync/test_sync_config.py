"""Settings resolve once: flags > config file > environment > defaults."""

from __future__ import annotations

import random

import pytest

from sync import ConfigError, MqttSync, SyncConfig, load_config, topics
from sync.backoff import Backoff
from sync.journal import journal_files


def write(tmp_path, text):
    path = tmp_path / "sync.ini"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("flags", "file_text", "env", "expected"),
    [
        ({}, None, {}, "default"),
        ({}, None, {"EDGE_SYNC_FLEET": "from-env"}, "from-env"),
        ({}, "[sync]\nfleet = from-file\n", {"EDGE_SYNC_FLEET": "from-env"}, "from-file"),
        ({"fleet": "from-flag"}, "[sync]\nfleet = from-file\n", {"EDGE_SYNC_FLEET": "e"},
         "from-flag"),
        ({"fleet": None}, "[sync]\nfleet = from-file\n", {}, "from-file"),  # None = not given
    ],
)
def test_precedence(tmp_path, flags, file_text, env, expected):
    path = write(tmp_path, file_text) if file_text else None
    assert load_config(flags, path, env).fleet == expected


def test_config_file_from_environment_and_types(tmp_path):
    path = write(tmp_path, "[sync]\nkeepalive = 7\nfsync = yes\ntelemetry_interval = 2.5\n")
    cfg = load_config({}, None, {"EDGE_SYNC_CONFIG": str(path), "EDGE_SYNC_KEEPALIVE": "9"})
    assert (cfg.keepalive, cfg.fsync, cfg.telemetry_interval) == (7, True, 2.5)


def test_paths_in_a_file_are_relative_to_it(tmp_path):
    (tmp_path / "certs").mkdir()
    path = write(tmp_path, "[sync]\nbroker = mqtts://h:8883\nca_file = certs/ca.crt\n")
    assert load_config({}, path, {}).ca_file == str(tmp_path / "certs" / "ca.crt")


def test_broker_url_parsing():
    assert SyncConfig(broker="mqtts://example.org").address.port == 8883
    assert SyncConfig(broker="mqtt://example.org").address.port == 1883
    assert SyncConfig(broker="mqtt://10.1.2.3:1999").address.url == "mqtt://10.1.2.3:1999"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"broker": "http://x"}, {}, "must start with mqtt://"),
        ({"broker": "mqtt://u:p@host"}, {}, "not in the broker URL"),
        ({"broker": "mqtt://h", "ca_file": "ca.pem"}, {}, "use mqtts://"),
        ({"broker": "mqtts://h", "cert_file": "c.pem"}, {}, "together"),
        ({"keepalive": 0}, {}, "keepalive"),
        ({}, {"EDGE_SYNC_KEEPALIVE": "soon"}, "EDGE_SYNC_KEEPALIVE"),
        ({}, {"EDGE_SYNC_FSYNC": "maybe"}, "true/false"),
        ({"device_id": "cam/01"}, {}, "letters, digits"),
        ({"colour": "red"}, {}, "unknown setting"),
        ({"password": "x"}, {}, "username is not"),
    ],
)
def test_bad_settings_raise_config_error(flags, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(flags, None, env)


def test_unknown_key_or_missing_section_in_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'brokr'"):
        load_config({}, write(tmp_path, "[sync]\nbrokr = mqtt://h\n"), {})
    with pytest.raises(ConfigError, match=r"no \[sync\] section"):
        load_config({}, write(tmp_path, "[other]\nx = 1\n"), {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, tmp_path / "missing.ini", {})


def test_redacted_hides_password():
    cfg = SyncConfig(username="u", password="secret")
    assert cfg.redacted()["password"] == "***"


def test_backoff_full_jitter_grows_to_cap_and_resets():
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        ceiling = b.ceiling()
        ceilings.append(ceiling)
        assert 0.0 <= b.next_delay() <= ceiling
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert ceilings[5:] == [8.0] * 5
    draws = [b.next_delay() for _ in range(300)]  # at the cap: spread over [0, cap]
    assert min(draws) < 1.0 and max(draws) > 7.0
    b.reset()
    assert b.ceiling() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_backoff_survives_very_long_outages():
    b = Backoff(0.5, 30.0)
    b.attempt = 10_000
    assert b.ceiling() == 30.0


@pytest.mark.parametrize("bad", ["cam-01\n", "cam-01\r\n", " cam-01"])
def test_a_device_id_read_from_a_file_with_its_newline_is_refused_by_name(tmp_path, bad):
    """`$` also matches before a final newline: "cam-01\\n" used to pass, then every connection
    was refused by the broker. Refused at once, in one line naming the id."""
    cfg = load_config({"broker": "mqtt://127.0.0.1:1"}, None, {})
    with pytest.raises(ConfigError) as caught:
        MqttSync(config=cfg, device_id=bad, outbox=tmp_path / "o.db")
    message = str(caught.value)
    assert repr(bad) in message and "strip the spaces or newline" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="fleet 'shop\\\\n'"):
        cfg.replace(fleet="shop\n")


def test_names_with_a_trailing_newline_are_not_topic_levels(tmp_path):
    assert topics.is_name("cam-01") and not topics.is_name("cam\n")
    assert not topics.is_name("cam-01\r\n") and not topics.is_name("\n")
    base = tmp_path / "o.db"  # a stray file with a newline in its name is not a journal
    for name in ("o.db.journal.2", "o.db.journal.3\n"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in journal_files(base)] == ["o.db.journal.2"]
