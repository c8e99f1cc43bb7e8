"""The Meta Custom Audiences destination against a local fake Graph API: the request Meta
documents (form-encoded ``payload`` and ``access_token``, POST to add and DELETE to
remove), the hashes Meta's own example carries, the 10,000-row limit, and what each
Graph API error code means."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cdp.activation import meta_audiences
from cdp.activation.ad_identifiers import META_DEFAULT_SCHEMA
from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig, MetaCustomAudiencesSettings
from cdp.activation.meta_audiences import MetaCustomAudiencesDestination, ad_profile, build

TOKEN = "meta-system-user-token-value"
# The four hashes of the example payload in Meta's "Custom Audience Users" reference
# (POST /<CUSTOM_AUDIENCE_ID>/users). The page prints only the hashes; they are the
# SHA-256 of test1@example.com ... test4@example.com.
META_REFERENCE_EMAIL_HASHES = {
    "test1@example.com": "9b431636bd164765d63c573c346708846af4f68fe3701a77a3bdd7e7e5166254",
    "test2@example.com": "8cc62c145cd0c6dc444168eaeb1b61b351f9b1809a579cc9b4c9e9d7213a39ee",
    "test3@example.com": "4eaf70b1f7a797962b9d2a533f122c8039012b31e0a52b34a426729319cb792a",
    "test4@example.com": "98df8d46f118f8bef552b0ec0a3d729466a912577830212a844b73960777ac56",
}
# Meta Conversions API sample payload's "ph": the phone 1-234-567-8901 as Meta wants it.
META_SAMPLE_PHONE_SHA256 = "254aa248acb47dd654ca3ea53f48c2c26d641d23d7e2e93a1ec56258df7674c4"


class FakeGraph:
    """Records Graph API requests; answers what the test scripts (default: Meta's success)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.app_secret: str | None = None  # set: "Require App Secret" is on
        self.lock = threading.Lock()
        graph = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {k: v[0] for k, v in parse_qs(raw.decode("ascii"), strict_parsing=bool(raw)).items()}
                with graph.lock:
                    graph.requests.append({"method": self.command, "path": self.path,
                                           "headers": dict(self.headers), "form": form})
                    scripted = graph.answers.pop(0) if graph.answers else None
                if scripted is None and graph.app_secret is not None \
                        and form.get("appsecret_proof") != proof_of(form.get("access_token", ""), graph.app_secret):
                    scripted = (400, {}, json.dumps({"error": {
                        "message": "API calls from the server require an appsecret_proof argument",
                        "type": "GraphMethodException", "code": 100, "fbtrace_id": "AbCdEf"}}).encode())
                if scripted is None:
                    rows = json.loads(form["payload"])["data"]
                    scripted = (200, {}, json.dumps({"audience_id": self.path.split("/")[2], "session_id": "1",
                                                     "num_received": len(rows), "num_invalid_entries": 0,
                                                     "invalid_entry_samples": {}}).encode())
                status, headers, answer = scripted
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = _handle
            do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def error(self, status: int, code: int, subcode: int | None = None, message: str = "An error",
              headers: dict[str, str] | None = None) -> None:
        error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code,
                                 "fbtrace_id": "AbCdEf"}
        if subcode is not None:
            error["error_subcode"] = subcode
        self.answers.append((status, headers or {}, json.dumps({"error": error}).encode()))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def proof_of(token: str, app_secret: str) -> str:
    """The fake's own appsecret_proof, as Graph API's "Securing Requests" defines it."""
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    g = FakeGraph()
    yield g
    g.stop()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def change(profile_id: str, audience: str = "pro", transition: str = "entered",
           profile: dict[str, Any] | None = None, *, email: str | None = None) -> OutboundMessage:
    if profile is None and email is not None:
        profile = {"profile_id": profile_id, "traits": {}, "identifiers": {"email": [email]}, "fields": {}}
    body = {"kind": "audience_membership", "destination_id": "meta", "message_id": f"{profile_id}-{audience}",
            "audience_id": audience, "profile_id": profile_id, "transition": transition,
            "event": "Audience Entered" if transition == "entered" else "Audience Exited", "version": 7,
            "at": "2026-12-06T12:00:00Z", "profile": profile}
    return OutboundMessage(f"{audience}-{profile_id}-{transition}-7", body)


def destination(graph: FakeGraph, **options: Any) -> MetaCustomAudiencesDestination:
    return MetaCustomAudiencesDestination(access_token=TOKEN, base_url=graph.url, **options)


def rows_of(request: dict[str, Any]) -> list[list[str]]:
    return json.loads(request["form"]["payload"])["data"]


# --- request shape ----------------------------------------------------------------------------

def test_an_entry_is_posted_as_metas_form_encoded_payload_with_the_token_in_the_body(graph: FakeGraph) -> None:
    profile = {"profile_id": "p1",
               "traits": {"email": "Test1@Example.com", "firstName": "Ana", "lastName": "O'Brien",
                          "address": {"city": "San Francisco", "state": "CA", "postalCode": "94105-1234",
                                      "country": "US"}},
               "identifiers": {"email": ["test1@example.com"], "phone": ["+12345678901"],
                               "ios.idfa": ["AECE52E7-03EE-455A-B3C4-E57283966239"]},
               "fields": {}}

    (outcome,) = destination(graph, audience_ids={"pro": "23850000000000001"}).send(
        [change("p1", profile=profile)])

    assert outcome.delivered
    (request,) = graph.requests
    assert request["method"] == "POST"
    assert request["path"] == "/v26.0/23850000000000001/users"  # no token, no data in the URL
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request["headers"]
    assert set(request["form"]) == {"payload", "access_token"}
    assert request["form"]["access_token"] == TOKEN
    payload = json.loads(request["form"]["payload"])
    assert payload["schema"] == list(META_DEFAULT_SCHEMA)
    assert payload["schema"] == ["EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "MADID"]
    assert payload["data"] == [[
        META_REFERENCE_EMAIL_HASHES["test1@example.com"],  # the hash in Meta's own example
        META_SAMPLE_PHONE_SHA256,                          # digits with country code, no "+"
        sha("ana"), sha("obrien"), sha("sanfrancisco"), sha("ca"), sha("94105"), sha("us"),
        "aece52e7-03ee-455a-b3c4-e57283966239",            # MADID: lowercase, not hashed
    ]]


def test_meta_reference_example_hashes_come_out_of_raw_emails(graph: FakeGraph) -> None:
    messages = [change(f"p{n}", email=f"  {email.upper()} ") for n, email in enumerate(META_REFERENCE_EMAIL_HASHES)]

    outcomes = destination(graph, schema=["EMAIL"]).send(messages)

    assert all(o.delivered for o in outcomes)
    (request,) = graph.requests
    assert rows_of(request) == [[h] for h in META_REFERENCE_EMAIL_HASHES.values()]


def test_an_exit_is_a_delete_with_the_same_payload_shape(graph: FakeGraph) -> None:
    (outcome,) = destination(graph, schema=["EMAIL"]).send([change("p1", transition="exited",
                                                                    email="test2@example.com")])

    assert outcome.delivered
    (request,) = graph.requests
    assert request["method"] == "DELETE"
    assert request["path"] == "/v26.0/pro/users"  # no mapping: the CDP audience id is used
    assert json.loads(request["form"]["payload"]) == {
        "schema": ["EMAIL"], "data": [[META_REFERENCE_EMAIL_HASHES["test2@example.com"]]]}
    assert request["form"]["access_token"] == TOKEN


def test_adds_and_removes_are_split_per_audience_and_each_answer_decides_its_own_rows(graph: FakeGraph) -> None:
    messages = [change("p1", "pro", email="a@example.com"), change("p2", "pro", "exited", email="b@example.com"),
                change("p3", "trial", email="c@example.com"), change("p4", "pro", email="d@example.com")]
    graph.answers = [(200, {}, b'{"num_received":2}')]  # pro adds
    graph.error(400, 100, 1713230, "Invalid parameter")  # pro removes: a flagged audience
    graph.error(400, 80003, message="There have been too many calls")  # trial adds: throttled

    outcomes = destination(graph, schema=["EMAIL"], audience_ids={"pro": "111", "trial": "222"},
                           api_version="v22.0").send(messages)

    assert [(r["method"], r["path"], len(rows_of(r))) for r in graph.requests] == [
        ("POST", "/v22.0/111/users", 2), ("DELETE", "/v22.0/111/users", 1), ("POST", "/v22.0/222/users", 1)]
    assert rows_of(graph.requests[0]) == [[sha("a@example.com")], [sha("d@example.com")]]
    assert [o.verdict for o in outcomes] == ["delivered", "permanent", "retry", "delivered"]
    assert outcomes[1].reason == "Meta error 100/1713230: Invalid parameter"
    assert outcomes[2].reason.startswith("Meta error 80003")


# --- batching ---------------------------------------------------------------------------------

def test_exactly_10000_rows_are_one_request(graph: FakeGraph) -> None:
    messages = [change(f"p{n}", email=f"user{n}@example.com") for n in range(10_000)]
    outcomes = destination(graph, schema=["EMAIL"]).send(messages)
    assert all(o.delivered for o in outcomes)
    assert [len(rows_of(r)) for r in graph.requests] == [10_000]


def test_10001_rows_are_two_requests_and_a_failed_one_decides_only_its_rows(graph: FakeGraph) -> None:
    messages = [change(f"p{n}", email=f"user{n}@example.com") for n in range(10_001)]
    graph.answers = [(200, {}, b"{}")]
    graph.error(500, 2, message="Service temporarily unavailable")

    outcomes = destination(graph, schema=["EMAIL"]).send(messages)

    assert [len(rows_of(r)) for r in graph.requests] == [10_000, 1]
    assert rows_of(graph.requests[1]) == [[sha("user10000@example.com")]]
    assert all(o.delivered for o in outcomes[:10_000])
    assert outcomes[10_000].verdict == "retry"


def test_a_smaller_batch_size_is_honoured_and_metas_limit_cannot_be_exceeded(graph: FakeGraph) -> None:
    messages = [change(f"p{n}", email=f"user{n}@example.com") for n in range(5)]
    destination(graph, schema=["EMAIL"], max_rows=2).send(messages)
    assert [len(rows_of(r)) for r in graph.requests] == [2, 2, 1]
    with pytest.raises(ValueError, match="max_rows"):
        destination(graph, max_rows=10_001)
    with pytest.raises(ValueError, match="schema"):
        destination(graph, schema=["EMAIL", "SSN"])


# --- messages that cannot be sent -------------------------------------------------------------

def test_messages_without_a_usable_identifier_are_dead_lettered_unsent(graph: FakeGraph) -> None:
    gone = change("p1", profile=None)
    empty = change("p2", profile={"profile_id": "p2", "traits": {"plan": "pro", "email": "not-an-email"},
                                  "identifiers": {"user_id": ["u2"]}, "fields": {}})
    event = OutboundMessage("evt-1", {"kind": "event", "profile_id": "p3", "triggers": ["t"], "event": {},
                                      "profile": None})
    good = change("p4", email="d@example.com")

    outcomes = destination(graph).send([gone, empty, event, good])

    assert [o.verdict for o in outcomes] == ["permanent", "permanent", "permanent", "delivered"]
    assert outcomes[0].reason == outcomes[1].reason == "no usable identifier"
    assert len(graph.requests) == 1 and len(rows_of(graph.requests[0])) == 1


# --- error mapping ----------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code", "verdict"), [
    (400, 4, "retry"),       # application request limit
    (400, 17, "retry"),      # user request limit
    (400, 32, "retry"),      # page request limit
    (400, 613, "retry"),     # too many calls from this ad account
    (400, 80003, "retry"),   # custom audience business-use-case rate limit
    (500, 1, "retry"),       # unknown, temporary
    (500, 2, "retry"),       # service temporarily unavailable
    (400, 190, "permanent"),  # invalid or expired access token
    (400, 100, "permanent"),  # invalid parameter
    (403, 10, "permanent"),   # no permission
    (403, 200, "permanent"),  # permissions error
])
def test_graph_error_codes_decide_retry_or_dead_letter(graph: FakeGraph, status: int, code: int,
                                                        verdict: str) -> None:
    graph.error(status, code, message=f"(#{code}) Something")
    (outcome,) = destination(graph).send([change("p1", email="a@example.com")])
    assert outcome.verdict == verdict
    assert outcome.reason.startswith(f"Meta error {code}")


def test_a_throttle_keeps_the_retry_after_meta_sends(graph: FakeGraph) -> None:
    graph.error(429, 17, 2446079, "User request limit reached", headers={"Retry-After": "120"})
    (outcome,) = destination(graph).send([change("p1", email="a@example.com")])
    assert outcome.verdict == "retry" and outcome.retry_after_s == 120


def test_answers_without_a_graph_error_fall_back_to_the_http_status(graph: FakeGraph) -> None:
    graph.answers = [(503, {"Content-Type": "text/html"}, b"<html>down</html>"), (404, {}, b"not found")]
    first = destination(graph).send([change("p1", email="a@example.com")])
    second = destination(graph).send([change("p1", email="a@example.com")])
    assert first[0].verdict == "retry" and second[0].verdict == "permanent"


def test_reasons_carry_no_token_url_or_identifier(graph: FakeGraph) -> None:
    graph.error(400, 190, 463, f"Error validating access token: see https://developers.facebook.com/x?t={TOKEN}")
    (outcome,) = destination(graph).send([change("p1", email="a@example.com")])
    assert outcome.verdict == "permanent"
    assert TOKEN not in outcome.reason and "http" not in outcome.reason
    assert "a@example.com" not in outcome.reason and sha("a@example.com") not in outcome.reason


def test_a_refused_connection_is_retried_naming_only_the_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = MetaCustomAudiencesDestination(access_token=TOKEN, base_url=f"http://127.0.0.1:{port}")
    (outcome,) = dest.send([change("p1", email="a@example.com")])
    assert outcome.verdict == "retry" and "127.0.0.1" not in outcome.reason and TOKEN not in outcome.reason


# --- profiles ---------------------------------------------------------------------------------

def test_ad_profile_reads_fields_then_identifiers_then_traits() -> None:
    profile = {"profile_id": "p1",
               "traits": {"email": "Trait@Example.com", "first_name": "Ana", "lastName": "Silva",
                          "zip": "SW1A 1AA", "address": {"country": "GB", "city": "London"}},
               "identifiers": {"email": ["id@example.com"], "android.idfa": ["38400000-8cf0-11bd-b23e-10b96e40000d"]},
               "fields": {"email": "mapped@example.com"}}
    view = ad_profile(profile)
    assert view["email"] == ["mapped@example.com", "id@example.com", "Trait@Example.com"]
    assert view["first_name"] == ["Ana"] and view["last_name"] == ["Silva"]
    assert view["zip"] == ["SW1A 1AA"] and view["country"] == ["GB"] and view["city"] == ["London"]
    assert view["madid"] == ["38400000-8cf0-11bd-b23e-10b96e40000d"]
    assert ad_profile(None) == {}


# --- build ------------------------------------------------------------------------------------

def config(**settings: Any) -> DestinationConfig:
    return DestinationConfig.model_validate({
        "id": "meta-ads", "name": "Meta", "type": "meta_custom_audiences", "audiences": ["pro", "trial"],
        "settings": {"ad_account_id": "act_123", "access_token_secret_name": "cdp/meta/token", **settings}})


def test_build_reads_the_token_by_name_and_the_local_overrides(graph: FakeGraph,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def secret(name: str) -> str:
        asked.append(name)
        return TOKEN + "\n"

    monkeypatch.setenv("CDP_META_API_URL", graph.url)
    monkeypatch.setenv("CDP_META_AUDIENCE_IDS", json.dumps({"meta-ads": {"pro": "555"}, "other": {"pro": "9"}}))
    dest = build(config(api_version="v20.0"), secret, lambda service: None)

    (outcome,) = dest.send([change("p1", email="a@example.com")])

    assert outcome.delivered and asked == ["cdp/meta/token"]
    (request,) = graph.requests
    assert request["path"] == "/v20.0/555/users" and request["form"]["access_token"] == TOKEN


def test_build_defaults_to_metas_host_and_a_flat_audience_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDP_META_API_URL", raising=False)
    monkeypatch.setenv("CDP_META_AUDIENCE_IDS", '{"pro": "777"}')
    dest = build(config(), lambda name: TOKEN, lambda service: None)
    assert isinstance(dest, MetaCustomAudiencesDestination)
    assert dest.base_url == "https://graph.facebook.com" == meta_audiences.GRAPH_URL
    assert dict(dest.audience_ids) == {"pro": "777"} and dest.api_version == "v26.0"
    assert urlsplit(dest.base_url).scheme == "https"


@pytest.mark.skipif("audience_ids" not in MetaCustomAudiencesSettings.model_fields,
                    reason="the settings model has no audience_ids yet")
def test_build_prefers_the_settings_audience_ids_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_META_AUDIENCE_IDS", '{"pro": "777", "trial": "888"}')
    dest = build(config(audience_ids={"pro": "123"}), lambda name: TOKEN, lambda service: None)
    assert isinstance(dest, MetaCustomAudiencesDestination)
    assert dict(dest.audience_ids) == {"pro": "123", "trial": "888"}


# --- appsecret_proof ("Require App Secret") ----------------------------------------------------

def test_appsecret_proof_is_the_hmac_sha256_of_the_token_keyed_with_the_app_secret() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert meta_audiences.appsecret_proof("what do ya want for nothing?", "Jefe") == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_with_the_app_secret_every_request_carries_the_proof_an_app_requiring_it_accepts(graph: FakeGraph) -> None:
    graph.app_secret = "meta-app-secret"
    dest = destination(graph, app_secret="meta-app-secret")

    outcomes = dest.send([change("p1", email="a@example.com"),
                          change("p2", transition="exited", email="b@example.com")])

    assert [o.verdict for o in outcomes] == ["delivered", "delivered"]
    assert [r["method"] for r in graph.requests] == ["POST", "DELETE"]
    assert all(r["form"]["appsecret_proof"] == proof_of(TOKEN, "meta-app-secret") for r in graph.requests)
    assert all("meta-app-secret" not in json.dumps(r) for r in graph.requests)  # the secret itself never leaves


def test_without_the_app_secret_an_app_requiring_it_refuses_and_the_change_is_dead_lettered(graph: FakeGraph) -> None:
    graph.app_secret = "meta-app-secret"

    (outcome,) = destination(graph).send([change("p1", email="a@example.com")])

    assert outcome.verdict == "permanent"
    assert outcome.reason.startswith("Meta error 100: API calls from the server require an appsecret_proof")
    assert "appsecret_proof" not in graph.requests[0]["form"]


def test_build_reads_the_app_secret_by_name_when_configured(graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    graph.app_secret = "meta-app-secret"
    secrets = {"cdp/meta/token": TOKEN, "cdp/meta/app-secret": "meta-app-secret\n"}
    monkeypatch.setenv("CDP_META_API_URL", graph.url)

    dest = build(config(app_secret_name="cdp/meta/app-secret"), secrets.__getitem__, lambda service: None)

    assert isinstance(dest, MetaCustomAudiencesDestination) and dest.app_secret == "meta-app-secret"
    assert dest.send([change("p1", email="a@example.com")])[0].delivered
    assert build(config(), secrets.__getitem__, lambda service: None).app_secret is None  # type: ignore[attr-defined]
