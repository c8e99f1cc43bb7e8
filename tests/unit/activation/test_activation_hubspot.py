"""The HubSpot destination against a local fake CRM v3 batch upsert endpoint: the request
HubSpot requires (path, bearer token, at most 100 inputs, unique ids, idProperty email,
string properties), the membership property, and what its answers mean."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig
from cdp.activation.hubspot import HubSpotDestination, build

TOKEN = "pat-na1-00000000-test-token"
PATH = "/crm/v3/objects/contacts/batch/upsert"


def profile(n: int, *, email: str | None = None, memberships: list[str] | None = None,
            **extra: Any) -> dict[str, Any]:
    found = {"profile_id": f"p{n}", "traits": {"email": f"Person{n}@Example.com", "plan": "pro"},
             "identifiers": {"user_id": [f"u{n}"], "email": [email or f"person{n}@example.com"]},
             "fields": {"firstname": f"Ana {n}", "plan": "pro"}, **extra}
    if memberships is not None:
        found["memberships"] = memberships
    return found


def change(n: int, transition: str = "entered", audience: str = "pro", prof: Any = "default") -> OutboundMessage:
    return OutboundMessage(f"m{n}-{audience}-{transition}", {
        "kind": "audience_membership", "destination_id": "crm", "message_id": f"m{n}", "audience_id": audience,
        "profile_id": f"p{n}", "transition": transition,
        "event": "Audience Entered" if transition == "entered" else "Audience Exited", "version": 3,
        "at": "2026-12-06T12:00:00Z", "profile": profile(n) if prof == "default" else prof})


class FakeHubSpot:
    """The batch upsert endpoint: refuses what HubSpot refuses, records what it accepts,
    and answers what the test scripts (default: 200, every input upserted)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                fake.requests.append(request)
                status, headers, answer = fake.check(request) or (
                    fake.answers.pop(0) if fake.answers else fake.success(request["body"]["inputs"]))
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @staticmethod
    def check(request: dict[str, Any]) -> tuple[int, dict[str, str], Any] | None:
        """HubSpot's refusals of a malformed request (None: well formed)."""
        if request["path"] != PATH:
            return 404, {}, {"status": "error", "message": "not found", "category": "OBJECT_NOT_FOUND"}
        if request["headers"].get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, {"status": "error", "category": "INVALID_AUTHENTICATION",
                             "message": "Authentication credentials not found."}
        inputs = request["body"].get("inputs")
        problems = []
        if not request["headers"].get("Content-Type", "").startswith("application/json"):
            problems.append("content type")
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 100:
            problems.append("inputs: 1 to 100")
        else:
            ids = [item.get("id") for item in inputs]
            if len(set(ids)) != len(ids):
                problems.append("Duplicate IDs found in batch input")
            for item in inputs:
                if item.get("idProperty") != "email" or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", item["id"]):
                    problems.append("idProperty / id")
                if not all(isinstance(v, str) for v in item.get("properties", {}).values()):
                    problems.append("property values must be strings")
        if problems:
            return 400, {}, {"status": "error", "category": "VALIDATION_ERROR", "message": "; ".join(problems)}
        return None

    @staticmethod
    def success(inputs: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
        return 200, {}, {"status": "COMPLETE", "startedAt": "2026-12-06T12:00:00Z",
                         "completedAt": "2026-12-06T12:00:01Z",
                         "results": [{"id": str(1000 + n), "new": False, "properties": item["properties"]}
                                     for n, item in enumerate(inputs)]}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inputs(self) -> list[list[dict[str, Any]]]:
        return [r["body"]["inputs"] for r in self.requests]


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    fake = FakeHubSpot()
    yield fake
    fake.stop()


def destination(fake: FakeHubSpot, **options: Any) -> HubSpotDestination:
    return HubSpotDestination(access_token=TOKEN, base_url=fake.url, **options)


def test_contacts_are_upserted_by_email_with_their_fields_and_audiences(hubspot: FakeHubSpot) -> None:
    message = change(1, prof=profile(1, memberships=["vip", "pro", "pro"]))

    (outcome,) = destination(hubspot).send([message])

    assert outcome.delivered, outcome.reason
    (request,) = hubspot.requests
    assert request["path"] == PATH
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"inputs": [{
        "idProperty": "email", "id": "person1@example.com",
        "properties": {"firstname": "Ana 1", "plan": "pro", "cdp_audiences": "pro;vip"}}]}


def test_requests_carry_at_most_100_inputs(hubspot: FakeHubSpot) -> None:
    outcomes = destination(hubspot).send([change(n) for n in range(250)])

    assert all(o.delivered for o in outcomes) and len(outcomes) == 250
    assert [len(inputs) for inputs in hubspot.inputs()] == [100, 100, 50]
    assert [i["id"] for inputs in hubspot.inputs() for i in inputs] == [f"person{n}@example.com" for n in range(250)]


def test_a_smaller_batch_size_makes_smaller_requests(hubspot: FakeHubSpot) -> None:
    destination(hubspot, batch_size=2).send([change(n) for n in range(5)])
    assert [len(inputs) for inputs in hubspot.inputs()] == [2, 2, 1]
    with pytest.raises(ValueError, match="1 to 100"):
        destination(hubspot, batch_size=101)


def test_two_messages_for_one_email_never_share_a_request(hubspot: FakeHubSpot) -> None:
    shared = "shared@example.com"
    messages = [change(1, prof=profile(1, email=shared, memberships=["pro"])), change(2),
                change(3, prof=profile(3, email=shared, memberships=["pro", "vip"]))]

    outcomes = destination(hubspot).send(messages)

    assert all(o.delivered for o in outcomes)
    first, second = hubspot.inputs()
    assert [i["id"] for i in first] == [shared, "person2@example.com"]
    assert [(i["id"], i["properties"]["cdp_audiences"]) for i in second] == [(shared, "pro;vip")]


def test_the_email_is_the_first_identifier_else_the_trait(hubspot: FakeHubSpot) -> None:
    no_identifier = profile(2, identifiers={"user_id": ["u2"]})
    no_identifier["traits"]["email"] = "  Person2@Example.COM "
    destination(hubspot).send([change(1), change(2, prof=no_identifier)])
    assert [i["id"] for i in hubspot.inputs()[0]] == ["person1@example.com", "person2@example.com"]


def test_messages_without_a_usable_email_are_permanent_and_not_sent(hubspot: FakeHubSpot) -> None:
    bad = profile(2, identifiers={"email": ["not-an-email"]})
    bad["traits"] = {}
    outcomes = destination(hubspot).send([change(1, prof=None), change(2, prof=bad), change(3)])

    assert [o.verdict for o in outcomes] == ["permanent", "permanent", "delivered"]
    assert outcomes[0].reason == outcomes[1].reason == "no usable identifier"
    assert [i["id"] for i in hubspot.inputs()[0]] == ["person3@example.com"]

    hubspot.requests.clear()
    destination(hubspot).send([change(4, prof=None)])
    assert hubspot.requests == []  # nothing to send: no request at all


def test_without_memberships_the_property_holds_the_change_alone(hubspot: FakeHubSpot) -> None:
    destination(hubspot).send([change(1, "entered"), change(2, "exited")])
    entered, exited = hubspot.inputs()[0]
    assert entered["properties"]["cdp_audiences"] == "pro"
    assert exited["properties"]["cdp_audiences"] == ""  # clears the property


def test_an_exit_with_memberships_keeps_the_other_audiences(hubspot: FakeHubSpot) -> None:
    destination(hubspot, membership_property="segments").send(
        [change(1, "exited", prof=profile(1, memberships=["vip"]))])
    (item,) = hubspot.inputs()[0]
    assert item["properties"]["segments"] == "vip" and "cdp_audiences" not in item["properties"]


def test_a_triggered_event_syncs_fields_and_memberships_only_if_known(hubspot: FakeHubSpot) -> None:
    def event(n: int, prof: dict[str, Any]) -> OutboundMessage:
        return OutboundMessage(f"crm:e{n}", {"kind": "event", "destination_id": "crm", "message_id": f"e{n}",
                                             "profile_id": f"p{n}", "triggers": ["signup"],
                                             "event": {"type": "track", "event": "Signed Up"}, "profile": prof})

    destination(hubspot).send([event(1, profile(1)), event(2, profile(2, memberships=[]))])
    first, second = hubspot.inputs()[0]
    assert first["properties"] == {"firstname": "Ana 1", "plan": "pro"}
    assert second["properties"]["cdp_audiences"] == ""


def test_field_values_are_sent_as_hubspot_text(hubspot: FakeHubSpot) -> None:
    fields = {"vip": True, "score": 12, "ratio": 0.5, "tags": ["a", "b"], "meta": {"k": 1}, "note": None}
    destination(hubspot).send([change(1, prof=profile(1, fields=fields))])
    (item,) = hubspot.inputs()[0]
    assert item["properties"] == {"vip": "true", "score": "12", "ratio": "0.5", "tags": "a;b", "meta": '{"k": 1}',
                                  "note": "", "cdp_audiences": "pro"}


def test_a_multi_status_answer_fails_only_the_inputs_its_errors_name(hubspot: FakeHubSpot) -> None:
    hubspot.answers = [(207, {}, {
        "status": "COMPLETE", "results": [{"id": "1001"}], "numErrors": 2,
        "errors": [
            {"status": "error", "category": "VALIDATION_ERROR",
             "message": "Property values were not valid: Email address Person2@example.com is invalid",
             "context": {"ids": ["Person2@example.com"]}},
            {"status": "error", "category": "RATE_LIMITS", "message": "slow down",
             "errors": [{"message": "limit", "context": {"emails": ["person3@example.com"]}}]},
        ]})]

    outcomes = destination(hubspot).send([change(1), change(2), change(3)])

    assert [o.verdict for o in outcomes] == ["delivered", "permanent", "retry"]
    assert outcomes[1].reason.startswith("HubSpot batch error: VALIDATION_ERROR: Property values were not valid")
    assert "example.com" not in outcomes[1].reason and "[email]" in outcomes[1].reason
    assert outcomes[2].reason == "HubSpot batch error: RATE_LIMITS: slow down"


def test_an_error_naming_no_input_fails_the_whole_request(hubspot: FakeHubSpot) -> None:
    hubspot.answers = [(207, {}, {"status": "COMPLETE", "results": [],
                                  "errors": [{"status": "error", "category": "VALIDATION_ERROR",
                                              "message": "something failed", "context": {}}]})]
    outcomes = destination(hubspot).send([change(1), change(2)])
    assert [o.verdict for o in outcomes] == ["permanent", "permanent"]
    assert outcomes[0].reason == "HubSpot batch error: VALIDATION_ERROR: something failed"


def test_an_unreadable_multi_status_answer_is_retried(hubspot: FakeHubSpot) -> None:
    hubspot.answers = [(207, {}, b"<html>partial</html>")]
    outcomes = destination(hubspot).send([change(1), change(2)])
    assert [o.verdict for o in outcomes] == ["retry", "retry"]


def test_a_canceled_batch_is_retried(hubspot: FakeHubSpot) -> None:
    hubspot.answers = [(200, {}, {"status": "CANCELED", "results": []})]
    outcomes = destination(hubspot).send([change(1)])
    assert outcomes[0].verdict == "retry" and outcomes[0].reason == "HubSpot batch status CANCELED"


@pytest.mark.parametrize(("status", "headers", "verdict", "retry_after"), [
    (401, {}, "permanent", None),
    (403, {}, "permanent", None),
    (429, {}, "retry", None),  # HubSpot often sends no Retry-After: the delivery policy's backoff decides
    (429, {"Retry-After": "10"}, "retry", 10),
    (500, {}, "retry", None),
    (502, {}, "retry", None),
])
def test_a_whole_requests_answer_decides_for_all_its_inputs(hubspot: FakeHubSpot, status: int,
                                                            headers: dict[str, str], verdict: str,
                                                            retry_after: float | None) -> None:
    hubspot.answers = [(status, headers, {"status": "error", "category": "SOME_CATEGORY",
                                          "message": f"refused person1@example.com with {TOKEN}"})]
    outcomes = destination(hubspot).send([change(1), change(2)])
    assert [o.verdict for o in outcomes] == [verdict, verdict]
    assert outcomes[0].retry_after_s == retry_after
    assert outcomes[0].reason.startswith(f"HTTP {status}: SOME_CATEGORY: refused")
    assert TOKEN not in outcomes[0].reason and "person1" not in outcomes[0].reason


def test_a_wrong_token_is_a_permanent_failure(hubspot: FakeHubSpot) -> None:
    outcomes = HubSpotDestination(access_token="pat-na1-wrong", base_url=hubspot.url).send([change(1)])
    assert outcomes[0].verdict == "permanent"
    assert outcomes[0].reason == "HTTP 401: INVALID_AUTHENTICATION: Authentication credentials not found."


def test_a_failure_in_one_request_does_not_decide_for_another(hubspot: FakeHubSpot) -> None:
    hubspot.answers = [(500, {}, b"")]
    outcomes = destination(hubspot, batch_size=2).send([change(n) for n in range(4)])
    assert [o.verdict for o in outcomes] == ["retry", "retry", "delivered", "delivered"]
    assert outcomes[0].reason == "HTTP 500"


def test_a_refused_connection_is_retried() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    outcomes = HubSpotDestination(access_token=TOKEN, base_url=f"http://127.0.0.1:{port}").send([change(1)])
    assert outcomes[0].verdict == "retry" and outcomes[0].reason.startswith("no answer: ")
    assert "127.0.0.1" not in outcomes[0].reason


def test_build_reads_the_token_and_honours_the_api_url_override(hubspot: FakeHubSpot,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = DestinationConfig.model_validate({
        "id": "crm", "name": "CRM", "type": "hubspot", "audiences": ["pro"], "batch_size": 50,
        "settings": {"access_token_secret_name": "cdp/hubspot-token", "membership_property": "cdp_segments"}})
    asked: list[str] = []

    def secret(name: str) -> str:
        asked.append(name)
        return TOKEN + "\n"

    monkeypatch.delenv("CDP_HUBSPOT_API_URL", raising=False)
    assert build(config, secret, lambda service: None).base_url == "https://api.hubapi.com"

    monkeypatch.setenv("CDP_HUBSPOT_API_URL", hubspot.url + "/")
    built = build(config, secret, lambda service: None)

    assert asked == ["cdp/hubspot-token", "cdp/hubspot-token"]
    assert built.batch_size == 50 and TOKEN not in repr(built)
    (outcome,) = built.send([change(1)])
    assert outcome.delivered
    assert hubspot.inputs()[0][0]["properties"]["cdp_segments"] == "pro"


def test_a_batch_refused_for_one_invalid_contact_is_split_until_only_that_contact_is_dead_lettered(
        hubspot: FakeHubSpot) -> None:
    invalid = {"status": "error", "category": "VALIDATION_ERROR", "message": "Property values were not valid"}
    original_check = hubspot.check

    def refuse_person_5(request: dict[str, Any]) -> tuple[int, dict[str, str], Any] | None:
        refused = original_check(request)
        if refused is None and any(i["id"] == "person5@example.com" for i in request["body"]["inputs"]):
            return 400, {}, invalid  # HubSpot refuses the whole batch for one bad input
        return refused

    hubspot.check = refuse_person_5  # type: ignore[method-assign]
    outcomes = destination(hubspot).send([change(n) for n in range(8)])

    assert [o.verdict for o in outcomes] == ["delivered"] * 5 + ["permanent"] + ["delivered"] * 2
    assert outcomes[5].reason.startswith("HTTP 400")
    assert len(hubspot.requests) <= 1 + 2 * 3  # one batch, then halves down to the one contact
