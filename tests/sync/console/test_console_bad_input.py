"""What a user or a browser can get wrong is one clear answer, never a 500 or a traceback:
non-ASCII digits in limit=, JSON command bodies nested too deep or holding NaN, a mistyped
PostgreSQL URL (one line, the password never printed), a database that is down while a
device page is open (503 with the cause)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from synctest_broker import wait_for

from sync.fleet import main

TOKEN = "t0ken-for-the-bad-input-tests"


def answer(serve, path: str, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    req = urllib.request.Request(serve.base + path, data=body, headers=headers,
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_odd_limits_and_command_bodies_are_400(serve_factory, tmp_path):
    serve = serve_factory(str(tmp_path / "console.db"), token=TOKEN)
    for path in ("/api/events?limit=%C2%B2", "/api/alerts?limit=%C2%B9",
                 "/api/devices/x/telemetry?limit=%E2%91%A0", "/api/events?limit=%D9%A1%D9%A0"):
        status, body = answer(serve, path)
        assert status == 400 and "must be an integer from 1 to" in body["error"], (path, body)
    command = "/api/devices/cam-01/commands"
    deep = b'{"name":"ping","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = answer(serve, command, deep)
    assert status == 400 and "must be JSON" in body["error"], body
    for args in (b'{"x":NaN}', b'{"x":Infinity}', b'{"x":1e400}'):
        status, body = answer(serve, command, b'{"name":"ping","args":' + args + b"}")
        assert status == 400 and "no NaN or Infinity" in body["error"], (args, body)
    status, body = answer(serve, command, b'{"name":"ping","args":{"x":1}}')
    assert status == 202, body
    assert "Traceback" not in serve.stderr


@pytest.mark.parametrize(("url", "secret"), [
    ("postgresql://console:s3cret@[::1/fleet", "s3cret"),  # urlsplit raised; libpq quotes it
    ("postgresql://console:s3%cret@127.0.0.1/fleet", "s3%cret"),  # libpq quotes the token
])
def test_a_mistyped_postgresql_url_is_one_line_without_the_password(url, secret, broker,
                                                                    capsys):  # fmt: skip
    code = main(["--broker", broker.url, "serve", "--db", url, "--no-web"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot connect to PostgreSQL" in err and secret not in err, err


def test_listen_with_non_ascii_digits_is_one_line(tmp_path, broker, capsys):
    code = main(["--broker", broker.url, "serve", "--db", str(tmp_path / "c.db"),
                 "--listen", "127.0.0.1:\u00b2"])
    err = capsys.readouterr().err
    assert code == 2 and "HOST:PORT" in err and len(err.strip().splitlines()) == 1, err


def test_a_device_page_while_postgresql_is_down_says_why(serve_factory, publisher, pg_server):
    serve = serve_factory(pg_server.create_database())
    publisher.status("cam-01")
    wait_for(lambda: serve.get("/api/devices"), 30, "cam-01 in the fleet")
    assert serve.get("/api/devices/cam-01")["device"] == "cam-01"
    pg_server.halt()
    try:
        status, body = answer(serve, "/api/devices/cam-01")
        fleet_status, fleet = answer(serve, "/api/devices")
    finally:
        pg_server.resume()  # the other tests of the session use this server
    assert (status, fleet_status) == (503, 503), (body, fleet)
    assert body["error"].startswith("database postgresql"), body
    wait_for(lambda: answer(serve, "/api/devices/cam-01")[0] == 200, 30, "back after restart")
    assert "Traceback" not in serve.stderr
