"""The webhook destination against a real local HTTP server: request shape, signature,
idempotency key, custom headers, and what each kind of answer (or no answer) means."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cdp.activation.webhook import OutboundMessage, WebhookDestination
from cdp.activation.webhook_signing import verify

SECRET, OLD_SECRET = b"whsec-new", b"whsec-old"
MESSAGE = OutboundMessage("a1b2c3-entered-7", {"type": "audience_entered", "audience_id": "pro",
                                                "profile_id": "p1", "at": "2026-12-06T12:00:00.000Z"})


class Receiver:
    """A webhook receiver: records requests, answers what the test scripts."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes, float]] = []  # status, headers, body, delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, answer, delay = receiver.answers.pop(0) if receiver.answers else (200, {}, b"", 0)
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (the timeout test) is not an error here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cdp"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def destination(url: str, **options: Any) -> WebhookDestination:
    return WebhookDestination(url, [SECRET, OLD_SECRET], clock=lambda: 1_765_022_400.0, **options)


def test_a_message_is_posted_as_signed_json_with_its_idempotency_key(receiver: Receiver) -> None:
    (outcome,) = destination(receiver.url, headers={"X-Tenant": "acme"}).send([MESSAGE])

    assert outcome.delivered
    (request,) = receiver.requests
    assert request["path"] == "/hooks/cdp"
    assert json.loads(request["body"]) == MESSAGE.body
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json" and headers["X-Tenant"] == "acme"
    assert headers["Idempotency-Key"] == "a1b2c3-entered-7"
    # The receiver checks it with either secret (a rotation), and only within its tolerance.
    assert verify(headers["X-CDP-Signature"], request["body"], [OLD_SECRET], now=1_765_022_400.0)
    assert not verify(headers["X-CDP-Signature"], request["body"], [OLD_SECRET], now=1_765_022_400.0 + 301)
    assert not verify(headers["X-CDP-Signature"], request["body"] + b" ", [SECRET], now=1_765_022_400.0)


def test_every_message_gets_its_own_outcome_in_order(receiver: Receiver) -> None:
    receiver.answers = [(200, {}, b"", 0), (500, {}, b"db down", 0), (429, {"Retry-After": "7"}, b"", 0),
                        (400, {}, b'{"error":"unknown field"}', 0), (204, {}, b"", 0)]
    messages = [OutboundMessage(f"m{n}", {"n": n}) for n in range(5)]

    outcomes = destination(receiver.url).send(messages)

    assert [o.verdict for o in outcomes] == ["delivered", "retry", "retry", "permanent", "delivered"]
    assert outcomes[1].reason == "HTTP 500: db down"
    assert outcomes[2].retry_after_s == 7
    assert outcomes[3].reason == 'HTTP 400: {"error":"unknown field"}'
    assert [json.loads(r["body"])["n"] for r in receiver.requests] == [0, 1, 2, 3, 4]


def test_a_redirect_is_not_followed_and_is_not_a_delivery(receiver: Receiver) -> None:
    receiver.answers = [(302, {"Location": "http://127.0.0.1:1/elsewhere"}, b"", 0)]
    (outcome,) = destination(receiver.url).send([MESSAGE])
    assert outcome.verdict == "permanent" and outcome.reason.startswith("HTTP 302")
    assert len(receiver.requests) == 1


def test_a_slow_receiver_is_a_timeout_to_retry(receiver: Receiver) -> None:
    receiver.answers = [(200, {}, b"", 1.0)]
    (outcome,) = destination(receiver.url, timeout_s=0.2).send([MESSAGE])
    assert outcome.verdict == "retry" and "Timeout" in outcome.reason


def test_a_refused_connection_is_retried_without_the_url_in_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    (outcome,) = destination(f"http://127.0.0.1:{port}/hooks/secret-token-abc").send([MESSAGE])
    assert outcome.verdict == "retry"
    assert "secret-token-abc" not in outcome.reason and "127.0.0.1" not in outcome.reason


def test_configuration_mistakes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one signing secret"):
        WebhookDestination("https://example.com/hook", [])
    with pytest.raises(ValueError, match="may not replace Idempotency-Key"):
        WebhookDestination("https://example.com/hook", [SECRET], headers={"Idempotency-Key": "x"})
