"""A kept-alive connection goes back to the pool with nothing left unread, so the next
request on it succeeds (an unread 2xx body used to fail every other request)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cdp.activation.delivery import OutboundMessage
from cdp.activation.webhook import WebhookDestination


class KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep the connection open between requests

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = b'{"ok": true, "received": "yes, with a body we do not read"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_answers_with_a_body_do_not_break_the_next_request_on_the_same_connection(url: str) -> None:
    destination = WebhookDestination(url=url, secrets=[b"s"])
    outcomes = destination.send([OutboundMessage(f"m{n}", {"kind": "event", "n": n}) for n in range(6)])
    assert [o.verdict for o in outcomes] == ["delivered"] * 6, [o.reason for o in outcomes]
