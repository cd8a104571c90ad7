"""A mistyped PostgreSQL URL is one line, the password never printed."""

from __future__ import annotations

import pytest

from sync.fleet import main


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
