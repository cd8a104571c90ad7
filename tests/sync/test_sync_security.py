"""TLS (CA, client certificate, key) and password auth against one real broker with two
secured listeners; wrong credentials and untrusted certificates are refused clearly."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from synctest_broker import MOSQUITTO, Broker, free_port, run_fleet

from sync import AuthError, ConfigError, MqttSync, TlsError
from sync.config import load_config
from tests.conftest import run_cli
from tests.edge_sdk.test_pipeline import tiny_bundle

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 30}
EXT = {
    "ca": "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
          "subjectKeyIdentifier=hash\n",
    "server": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    "client": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\n"
              "authorityKeyIdentifier=keyid\n",
}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    (d / f"{name}.ext").write_text(EXT["ca"])
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, kind: str) -> None:
    (d / f"{name}.ext").write_text(EXT[kind])
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "server", "ca", "server")
    make_leaf(d, "device", "ca", "client")
    make_leaf(d, "intruder", "rogue-ca", "client")
    return d


@pytest.fixture(scope="module")
def secure_broker(certs, tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
    work = tmp_path_factory.mktemp("secure-broker")
    pwfile = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "ops", "right-pass"],
                   check=True, capture_output=True, timeout=30)
    tls_port, pw_port = free_port(), free_port()
    b = Broker(work, per_listener_settings=True, listeners=(
        f"listener {pw_port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {certs}/ca.crt\ncertfile {certs}/server.crt\n"
        f"keyfile {certs}/server.key\nrequire_certificate true\nallow_anonymous true\n"
    ))
    b.start()  # waits until every listener accepts connections
    b.tls_url = f"mqtts://127.0.0.1:{tls_port}"
    b.pw_url = f"mqtt://127.0.0.1:{pw_port}"
    yield b
    b.stop()


def tls_settings(certs: Path, ca: str = "ca", client: str = "device") -> dict[str, str]:
    return {"ca_file": str(certs / f"{ca}.crt"), "cert_file": str(certs / f"{client}.crt"),
            "key_file": str(certs / f"{client}.key")}


def test_tls_with_client_certificate_delivers(secure_broker, certs, tmp_path):
    # Settings from a config file, with paths relative to it, as on a real device.
    conf = tmp_path / "sync.ini"
    shutil.copy(certs / "ca.crt", tmp_path / "ca.crt")
    shutil.copy(certs / "device.crt", tmp_path / "device.crt")
    shutil.copy(certs / "device.key", tmp_path / "device.key")
    conf.write_text(f"[sync]\nbroker = {secure_broker.tls_url}\ndevice_id = cam-tls\n"
                    "ca_file = ca.crt\ncert_file = device.crt\nkey_file = device.key\n"
                    f"outbox = {tmp_path / 'o.db'}\nkeepalive = 2\n")
    s = MqttSync(config_file=conf, backoff_initial=0.05, backoff_cap=0.5).start()
    try:
        s.wait_connected(15)
        s.publish("detections", {"secure": True})
        assert s.drain(15)
    finally:
        s.close()


def test_untrusted_server_certificate_is_refused(secure_broker, certs, tmp_path):
    s = MqttSync(secure_broker.tls_url, "cam-x", tmp_path / "o.db",
                 **tls_settings(certs, ca="rogue-ca"), **FAST).start()
    try:
        with pytest.raises(TlsError, match="is not trusted"):
            s.wait_connected(3)
        receipt = s.publish("detections", {"kept": True})  # still accepted: kept in the outbox
        assert receipt.stored and s.state().outbox.depth >= 1 and s.state().sent == 0
    finally:
        s.close()


def test_client_certificate_from_unknown_ca_is_refused(secure_broker, certs, tmp_path):
    s = MqttSync(secure_broker.tls_url, "cam-y", tmp_path / "o.db",
                 **tls_settings(certs, client="intruder"), **FAST).start()
    try:
        with pytest.raises(TlsError, match="client certificate"):
            s.wait_connected(3)
    finally:
        s.close()


def test_password_right_and_wrong(secure_broker, tmp_path):
    good = MqttSync(secure_broker.pw_url, "cam-p", tmp_path / "g.db", username="ops",
                    password="right-pass", **FAST).start()
    bad = MqttSync(secure_broker.pw_url, "cam-q", tmp_path / "b.db", username="ops",
                   password="wrong-pass", **FAST).start()
    try:
        good.wait_connected(10)
        with pytest.raises(AuthError, match="refused the connection.*user 'ops'"):
            bad.wait_connected(3)
    finally:
        good.close()
        bad.close()


def test_cli_wrong_password_is_one_clear_line(secure_broker, monkeypatch):
    proc = run_fleet("--broker", secure_broker.pw_url, "--username", "ops",
                     "--password", "nope", "devices")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("edge-fleet: ") and "refused the connection" in lines[0]
    assert "nope" not in proc.stderr  # never echo the password


def test_cli_credentials_from_environment(secure_broker, monkeypatch):
    monkeypatch.setenv("EDGE_SYNC_USERNAME", "ops")
    monkeypatch.setenv("EDGE_SYNC_PASSWORD", "right-pass")
    proc = run_fleet("--broker", secure_broker.pw_url, "devices", "--wait", "0.2")
    assert proc.returncode == 0, proc.stderr


def test_cli_untrusted_certificate_is_one_clear_line(secure_broker, certs):
    args = ["--broker", secure_broker.tls_url, "--ca-file", str(certs / "rogue-ca.crt"),
            "--cert-file", str(certs / "device.crt"), "--key-file", str(certs / "device.key")]
    proc = run_fleet(*args, "devices")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "is not trusted" in lines[0] and "check ca_file" in lines[0]
    ok = run_fleet(*[a.replace("rogue-ca", "ca") for a in args], "devices", "--wait", "0.2")
    assert ok.returncode == 0, ok.stderr


def test_cli_missing_client_key_is_a_config_error(secure_broker, certs, tmp_path):
    proc = run_fleet("--broker", secure_broker.tls_url, "--ca-file", str(certs / "ca.crt"),
                     "--cert-file", str(certs / "device.crt"),
                     "--key-file", str(tmp_path / "missing.key"), "devices")
    assert proc.returncode == 2
    assert "cannot load client certificate" in proc.stderr


def test_config_rejects_tls_files_on_plain_url(certs):
    with pytest.raises(Exception, match="use mqtts://"):
        load_config({"broker": "mqtt://127.0.0.1:1", "ca_file": str(certs / "ca.crt")}, None, {})


def test_tls_insecure_mode_warns_on_every_connect(secure_broker, certs, tmp_path, caplog,
                                                  monkeypatch):
    """Issue 10.20: tls_insecure turned host-name checking off without a word."""
    caplog.set_level("WARNING", logger="sync")
    for n in range(2):
        with MqttSync(secure_broker.tls_url, "cam-i", tmp_path / "o.db", tls_insecure=True,
                      **tls_settings(certs), **FAST) as s:
            s.wait_connected(15)
        warnings = [r for r in caplog.records if "host-name verification is OFF" in r.message]
        assert len(warnings) == n + 1
        assert secure_broker.tls_url in warnings[-1].message
    monkeypatch.setenv("EDGE_SYNC_TLS_INSECURE", "1")
    proc = run_fleet("--broker", secure_broker.tls_url, "--ca-file", str(certs / "ca.crt"),
                     "--cert-file", str(certs / "device.crt"),
                     "--key-file", str(certs / "device.key"), "devices", "--wait", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "host-name verification is OFF" in proc.stderr


@pytest.mark.parametrize("missing", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_file_is_a_config_error_at_construction(certs, tmp_path, missing):
    """Review F3: a wrong ca_file was accepted, then the network thread restarted every
    second with a traceback while wait_connected() blamed the connection."""
    settings = {**tls_settings(certs), missing: str(tmp_path / "no-such.pem")}
    with pytest.raises(ConfigError, match="no-such.pem"):
        MqttSync("mqtts://127.0.0.1:1", "cam-c", tmp_path / "o.db", **settings, **FAST)
    assert not list(tmp_path.glob("o.db*"))  # refused before the outbox was created


def test_tls_file_gone_after_start_is_the_last_error_not_a_restart_loop(certs, tmp_path,
                                                                        caplog):
    """A CA file removed after construction is a config error of the network thread: recorded
    once as the last error and raised by wait_connected, never a thread restart."""
    caplog.set_level("ERROR", logger="sync")
    shutil.copy(certs / "ca.crt", tmp_path / "ca.crt")
    settings = {**tls_settings(certs), "ca_file": str(tmp_path / "ca.crt")}
    s = MqttSync("mqtts://127.0.0.1:1", "cam-g", tmp_path / "o.db", **settings, **FAST)
    (tmp_path / "ca.crt").unlink()
    s.start()
    try:
        with pytest.raises(ConfigError, match="cannot load CA file"):
            s.wait_connected(1.5)
        time.sleep(0.5)  # several backoff rounds (0.05 .. 0.5 s)
        state = s.state()
        assert state.thread_restarts == 0
        assert state.last_error is not None and str(tmp_path / "ca.crt") in state.last_error
    finally:
        s.close()
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert len([r for r in caplog.records if "cannot load CA file" in r.message]) == 1


def test_edge_run_with_missing_ca_file_is_one_line(tmp_path, tmp_path_factory, data_dir,
                                                   monkeypatch):
    """`edge-run --mqtt mqtts://...` with a wrong ca_file in the sync settings: one line naming
    the file and exit 2 (a wrong setting, like a bad broker URL), not tracebacks forever."""
    bundle = tiny_bundle("classify", tmp_path_factory, data_dir)
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("EDGE_SYNC_CA_FILE", str(missing))
    result = run_cli("edge-run", bundle, "--source", data_dir / "eval", "--max-frames", "2",
                     "--mqtt", f"mqtts://127.0.0.1:{free_port()}", "--device-id", "cam-c",
                     "--outbox", tmp_path / "o.db", "-q", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("edge-run: error: MQTT sink: cannot load CA file") and (
        str(missing) in line)


def test_edge_run_store_mode_with_missing_ca_file_leaves_the_store_alone(
        tmp_path, tmp_path_factory, data_dir):
    """`edge-run --store` says a wrong ca_file (here from --config) before creating the store."""
    bundle = tiny_bundle("classify", tmp_path_factory, data_dir)
    conf = tmp_path / "sync.ini"
    conf.write_text("[sync]\nca_file = no-such-ca.pem\n")
    store = tmp_path / "store"
    result = run_cli("edge-run", "--store", store, "--seed", bundle, "--source",
                     data_dir / "eval", "--max-frames", "2", "--mqtt",
                     f"mqtts://127.0.0.1:{free_port()}", "--device-id", "cam-s", "--config",
                     conf, "-q", timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot load CA file" in line and str(tmp_path / "no-such-ca.pem") in line
    assert not store.exists()
