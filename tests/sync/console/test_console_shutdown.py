"""SIGTERM (systemctl stop) ends `edge-fleet serve` in seconds even while a dashboard holds
/api/live open, and the ingest still flushes its last batch and prints its summary: the
server used to wait for the never-ending stream until SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

from synctest_broker import wait_for


def test_sigterm_with_a_dashboard_open_exits_and_flushes(serve_factory, publisher, tmp_path):
    serve = serve_factory(str(tmp_path / "console.db"))
    publisher.flush([publisher.envelope("cam-01", "detections", i, {"i": i})
                     for i in range(1, 51)])
    wait_for(lambda: serve.get("/api/stats")["ingest"]["stored"] == 50, 30, "50 stored")
    opened = threading.Event()
    ended: list[str] = []

    def viewer() -> None:
        try:
            with urllib.request.urlopen(serve.base + "/api/live", timeout=60) as live:
                opened.set()
                while live.read(1):
                    pass
            ended.append("closed")
        except Exception as exc:
            ended.append(repr(exc))

    thread = threading.Thread(target=viewer, daemon=True)
    thread.start()
    assert opened.wait(10)
    time.sleep(0.5)
    start = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    try:
        serve.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("still running 15 s after SIGTERM with a dashboard open") from None
    took = time.monotonic() - start
    serve._reader.join(10)
    assert serve.proc.returncode == 0, serve.stderr
    assert took < 8, f"took {took:.1f} s"
    assert "received 50, stored 50" in serve.stderr.splitlines()[-1], serve.stderr
    thread.join(10)
    assert ended, "the live stream is still open"
