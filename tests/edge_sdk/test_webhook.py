"""The webhook sink against a real HTTP server on the loopback interface: retries on 5xx,
no retry on 4xx, a bounded queue that drops the oldest, and bad URLs refused."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge_sdk.events import TrackStarted
from edge_sdk.sinks.base import SinkError
from edge_sdk.sinks.webhook import WebhookSink


class Endpoint:
    """A loopback HTTP server answering with the status codes it is given, in order."""

    def __init__(self, statuses=(), hold: threading.Event | None = None):
        self.statuses = list(statuses)
        self.hold = hold
        self.bodies: list[dict] = []
        self.calls = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if endpoint.hold is not None:
                    endpoint.hold.wait(10)
                endpoint.calls += 1
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                if status == 200:
                    endpoint.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def event(i):
    return TrackStarted(frame_index=i, timestamp=i / 10, tracker_id=i, class_id=0,
                        label="person", source="door")  # fmt: skip


def test_a_failed_post_is_retried_until_it_is_delivered_once():
    endpoint = Endpoint(statuses=[503, 500])
    sink = WebhookSink(endpoint.url, retries=3, backoff=(0.01, 0.05), extra={"device": "cam-1"})
    sink.open(None)
    sink.post_events([event(1)])
    sink.close()
    endpoint.close()
    assert endpoint.calls == 3 and sink.sent == 1 and sink.failed == 0
    assert endpoint.bodies == [{"device": "cam-1", **event(1).to_dict()}]
    assert endpoint.bodies[0]["source"] == "door"


def test_a_refusal_is_not_retried_and_an_unreachable_url_gives_up():
    endpoint = Endpoint(statuses=[400])
    sink = WebhookSink(endpoint.url, retries=3, backoff=(0.01, 0.05))
    sink.open(None)
    sink.post_events([event(1), event(2)])
    sink.close()
    endpoint.close()
    assert endpoint.calls == 2 and sink.sent == 1 and sink.failed == 1
    assert sink.last_error == "HTTP 400"
    gone = WebhookSink(endpoint.url, retries=2, backoff=(0.01, 0.02), timeout=1)
    gone.open(None)
    gone.post_events([event(3)])
    gone.close()
    assert gone.sent == 0 and gone.failed == 1


def test_a_full_queue_drops_the_oldest_events():
    hold = threading.Event()
    endpoint = Endpoint(hold=hold)
    sink = WebhookSink(endpoint.url, queue_size=4, drain_timeout=5)
    sink.open(None)
    sink.post_events([event(0)])  # the sender takes it and waits on the held server
    sink.post_events([event(i) for i in range(1, 11)])
    assert sink.dropped >= 6  # 10 queued behind one in flight, room for 4
    hold.set()
    sink.close()
    endpoint.close()
    ids = [b["tracker_id"] for b in endpoint.bodies]
    assert ids[-4:] == [7, 8, 9, 10] and sink.sent == len(ids) and sink.sent + sink.dropped == 11


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "http://", "hooks",
                                 "http://exa mple.com/hook", "http://host/a\nb",
                                 "http://host:99999/hook", "http://host:port/hook"])
def test_bad_urls_are_refused(url):
    with pytest.raises(SinkError, match="http"):
        WebhookSink(url)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_not_an_event_lost_as_sent(code):
    """urllib followed a 301/302/303 as a GET without the body, and the event counted as
    sent (an http:// URL redirected to https:// lost every event, silently)."""
    seen: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            seen.append((self.command, self.path,
                         self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(code if self.path == "/hook" else 200)
            self.send_header("Location", "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/hook", retries=2,
                       backoff=(0.01, 0.02))  # fmt: skip
    sink.open(None)
    sink.post_events([event(1)])
    sink.close()
    server.shutdown()
    server.server_close()
    assert [(m, p) for m, p, _ in seen] == [("POST", "/hook")]  # not retried, not followed
    assert sink.sent == 0 and sink.failed == 1
    assert sink.last_error.startswith(f"HTTP {code} redirect to /moved")


def test_events_left_queued_at_the_end_are_counted_as_dropped():
    """A slow endpoint at the end of a run: what did not go out within drain_timeout was
    abandoned without being counted anywhere (the summary said fewer events lost)."""
    import time

    hold = threading.Event()
    endpoint = Endpoint(hold=hold)
    sink = WebhookSink(endpoint.url, retries=0, timeout=1, drain_timeout=0.2)
    sink.open(None)
    sink.post_events([event(0)])
    deadline = time.monotonic() + 30  # a guard against a hang, not a timing assertion
    while len(sink._queue) and time.monotonic() < deadline:  # the sender has taken it
        time.sleep(0.01)
    sink.post_events([event(i) for i in range(1, 5)])
    sink.close()
    hold.set()
    endpoint.close()
    assert sink.dropped == 4
    assert sink.sent + sink.failed + sink.dropped == 5
