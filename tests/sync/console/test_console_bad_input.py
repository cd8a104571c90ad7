"""What a user or a browser can get wrong is one clear answer, never a 500 or a traceback:
a mistyped PostgreSQL URL (one line, the password never printed), a database that is down
while a device page is open (503 with the cause)."""

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
