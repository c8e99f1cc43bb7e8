"""The Slack destination against a local fake incoming webhook: the JSON it posts (Block
Kit from cdp.activation.slack_message), and what Slack's answers (or no answer) mean."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig
from cdp.activation.slack import SlackDestination, build
from cdp.activation.slack_message import (
    CONTEXT_TEXT_MAX,
    SECTION_FIELD_TEXT_MAX,
    SECTION_FIELDS_MAX,
    SECTION_TEXT_MAX,
    audience_change_message,
    trigger_message,
)
from cdp.segmentation.audience_events import audience_event

WEBHOOK_PATH = "/services/T000/B000/XXXXsecretXXXX"
PROFILE = {"profile_id": "p1", "traits": {"email": "Ana@Example.com", "plan": "pro"},
           "identifiers": {"user_id": ["u1"], "email": ["ana@example.com"], "anonymous_id": ["a1"]},
           "fields": {"Plan": "pro", "Email": "Ana@Example.com"}}


def change(transition: str = "entered", profile: Any = PROFILE) -> OutboundMessage:
    return OutboundMessage(f"m-{transition}", {
        "kind": "audience_membership", "destination_id": "slack-alerts", "message_id": f"m-{transition}",
        "audience_id": "pro", "profile_id": "p1", "transition": transition,
        "event": "Audience Entered" if transition == "entered" else "Audience Exited", "version": 7,
        "at": "2026-12-06T12:00:00Z", "profile": profile})


PRICING = {"type": "track", "event": "Pricing Viewed", "userId": "u1", "messageId": "e1",
           "timestamp": "2026-12-06T12:00:00Z", "properties": {"plan": "pro"}}
ALERT = OutboundMessage("slack-alerts:e1", {
    "kind": "event", "destination_id": "slack-alerts", "message_id": "e1", "profile_id": "p1",
    "triggers": ["pricing-alert"], "event": PRICING, "profile": PROFILE})


class FakeSlack:
    """An incoming webhook: records requests; answers 200 "ok" unless the test scripts otherwise."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, answer = fake.answers.pop(0) if fake.answers else (200, {}, b"ok")
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{WEBHOOK_PATH}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posted(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    yield fake
    fake.stop()


def assert_valid_slack_message(message: dict[str, Any]) -> None:
    """What Slack requires of an incoming-webhook message built from sections and contexts."""
    assert isinstance(message["text"], str) and message["text"].strip()
    assert message["blocks"], "a message with blocks has at least one"
    for block in message["blocks"]:
        assert block["type"] in ("section", "context")
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn" and 0 < len(block["text"]["text"]) <= SECTION_TEXT_MAX
            fields = block.get("fields", [])
            assert len(fields) <= SECTION_FIELDS_MAX
            assert all(f["type"] == "mrkdwn" and 0 < len(f["text"]) <= SECTION_FIELD_TEXT_MAX for f in fields)
        else:
            assert 0 < len(block["elements"]) <= 10
            assert all(e["type"] == "mrkdwn" and 0 < len(e["text"]) <= CONTEXT_TEXT_MAX for e in block["elements"])


def test_an_audience_change_is_posted_as_block_kit_json(slack: FakeSlack) -> None:
    (outcome,) = SlackDestination(slack.url).send([change()])

    assert outcome.delivered
    (request,) = slack.requests
    assert request["path"] == WEBHOOK_PATH
    assert request["headers"]["Content-Type"].startswith("application/json")
    (posted,) = slack.posted()
    assert_valid_slack_message(posted)
    expected = audience_change_message(audience_event(
        audience_id="pro", audience_name="pro", profile_id="p1", person={"userId": "u1"},
        transition="entered", version=7, at="2026-12-06T12:00:00Z"))
    assert posted == expected
    assert posted["text"] == "*u1* entered the audience *pro*"
    assert "p1" in posted["blocks"][1]["elements"][0]["text"]


def test_an_exit_of_a_profile_without_a_user_id_names_its_anonymous_id(slack: FakeSlack) -> None:
    anonymous = {**PROFILE, "identifiers": {"anonymous_id": ["a1"]}}
    SlackDestination(slack.url).send([change("exited", anonymous), change("exited", None)])
    first, gone = slack.posted()
    assert first["text"] == "*a1* exited the audience *pro*"
    assert gone["text"] == "*(none)* exited the audience *pro*"  # the profile no longer exists
    assert_valid_slack_message(gone)


def test_a_trigger_alert_shows_the_rule_the_event_and_the_mapped_fields(slack: FakeSlack) -> None:
    (outcome,) = SlackDestination(slack.url).send([ALERT])

    assert outcome.delivered
    (posted,) = slack.posted()
    assert_valid_slack_message(posted)
    assert posted == trigger_message("pricing-alert", PRICING, PROFILE["fields"])
    assert posted["text"] == ":rotating_light: *pricing-alert*: *u1* did *Pricing Viewed*"
    assert [f["text"] for f in posted["blocks"][1]["fields"]] == ["*Plan*\npro", "*Email*\nAna@Example.com"]


def test_data_cannot_inject_mentions_into_the_message(slack: FakeSlack) -> None:
    sneaky = {**PROFILE, "identifiers": {"user_id": ["<!channel> hi"]}}
    SlackDestination(slack.url).send([change(profile=sneaky)])
    (posted,) = slack.posted()
    assert "<!channel>" not in json.dumps(posted) and "&lt;!channel&gt; hi" in posted["text"]


def test_the_template_applies_to_the_kinds_whose_fields_it_uses(slack: FakeSlack) -> None:
    destination = SlackDestination(slack.url, template="{person} is now in {audience_name}")
    destination.send([change(), ALERT])
    audience, alert = slack.posted()
    assert audience["text"] == "u1 is now in pro"
    # {audience_name} is not a trigger field: the alert keeps the default template.
    assert alert["text"] == ":rotating_light: *pricing-alert*: *u1* did *Pricing Viewed*"

    shared = SlackDestination(slack.url, template=":bell: {person} ({event})")
    shared.send([change(), ALERT])
    assert [m["text"] for m in slack.posted()[2:]] == [":bell: u1 (Audience Entered)", ":bell: u1 (Pricing Viewed)"]


def test_a_template_neither_kind_can_use_is_refused() -> None:
    with pytest.raises(ValueError, match="neither audience changes nor trigger alerts"):
        SlackDestination("https://hooks.slack.com/services/x", template="{audience_name} {rule_name}")


@pytest.mark.parametrize(("status", "answer", "verdict"), [
    (400, b"invalid_payload", "permanent"),
    (403, b"action_prohibited", "permanent"),
    (404, b"no_service", "permanent"),
    (404, b"channel_not_found", "permanent"),
    (410, b"channel_is_archived", "permanent"),
    (500, b"rollup_error", "retry"),
    (503, b"", "retry"),
])
def test_slack_answers_are_classified(slack: FakeSlack, status: int, answer: bytes, verdict: str) -> None:
    slack.answers = [(status, {}, answer)]
    (outcome,) = SlackDestination(slack.url).send([change()])
    assert outcome.verdict == verdict
    assert outcome.reason == (f"HTTP {status}: {answer.decode()}" if answer else f"HTTP {status}")


def test_a_rate_limit_is_retried_after_slacks_retry_after(slack: FakeSlack) -> None:
    slack.answers = [(429, {"Retry-After": "30"}, b"rate_limited")]
    first, second = SlackDestination(slack.url).send([change(), ALERT])
    assert first.verdict == "retry" and first.retry_after_s == 30 and first.reason == "HTTP 429: rate_limited"
    assert second.delivered  # one request per message: the next one is tried on its own
    assert len(slack.requests) == 2


def test_a_refused_connection_is_retried_without_the_url_in_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    (outcome,) = SlackDestination(f"http://127.0.0.1:{port}{WEBHOOK_PATH}").send([change()])
    assert outcome.verdict == "retry" and outcome.reason.startswith("no answer: ")
    assert "secret" not in outcome.reason and "127.0.0.1" not in outcome.reason


def test_an_answer_that_echoes_the_webhook_url_is_scrubbed(slack: FakeSlack) -> None:
    slack.answers = [(404, {}, f"no such hook: {slack.url} ({WEBHOOK_PATH})".encode())]
    (outcome,) = SlackDestination(slack.url).send([change()])
    assert outcome.verdict == "permanent"
    assert "XXXXsecretXXXX" not in outcome.reason and "[webhook]" in outcome.reason


def test_a_redirect_is_not_followed(slack: FakeSlack) -> None:
    slack.answers = [(302, {"Location": "http://127.0.0.1:1/elsewhere"}, b"")]
    (outcome,) = SlackDestination(slack.url).send([change()])
    assert outcome.verdict == "permanent" and len(slack.requests) == 1


def test_a_message_of_an_unknown_kind_is_refused_without_a_request(slack: FakeSlack) -> None:
    (outcome,) = SlackDestination(slack.url).send([OutboundMessage("x", {"kind": "mystery"})])
    assert outcome.verdict == "permanent" and "mystery" in outcome.reason and not slack.requests


def test_build_reads_the_webhook_url_from_its_secret(slack: FakeSlack) -> None:
    config = DestinationConfig.model_validate({
        "id": "slack-alerts", "name": "Slack alerts", "type": "slack", "audiences": ["pro"],
        "settings": {"webhook_url_secret_name": "cdp/slack-webhook", "template": "{person} joined {audience_id}"}})
    asked: list[str] = []

    def secret(name: str) -> str:
        asked.append(name)
        return slack.url + "\n"

    destination = build(config, secret, lambda service: None)

    assert asked == ["cdp/slack-webhook"]
    assert "secret" not in repr(destination)
    (outcome,) = destination.send([change()])
    assert outcome.delivered and slack.posted()[0]["text"] == "u1 joined pro"


def test_a_secret_that_is_not_an_https_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="does not hold an https URL") as raised:
        SlackDestination("ftp://hooks.example/T0/sekrit")
    assert "sekrit" not in str(raised.value)
    with pytest.raises(ValueError):
        SlackDestination("http://hooks.slack.com/services/x")  # plain http only for the local stack
