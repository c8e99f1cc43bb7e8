"""The Google Ads Customer Match destination against local fake Google servers (OAuth token
endpoint and Google Ads API REST): the refresh-token exchange and its cache, the headers
every call needs, the create / addOperations / run sequence with the documented bodies,
the 100,000-identifier limit per request, partial failures, and what each
``google.rpc.Status`` means."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from cdp.activation.ad_identifiers import GOOGLE_MAX_IDENTIFIERS_PER_REQUEST
from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig, GoogleCustomerMatchSettings
from cdp.activation.google_customer_match import GoogleCredentials, GoogleCustomerMatchDestination, build

CUSTOMER, MANAGER = "1234567890", "9876543210"
CREDENTIALS = GoogleCredentials(developer_token="dev-token-abc", client_id="client-1.apps.googleusercontent.com",
                                client_secret="client-secret-xyz", refresh_token="1//refresh-token-value")
TEST_AT_EXAMPLE_SHA256 = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # sha256 test@example.com
ACCESS_TOKEN = re.compile(r"^ya29\.token-(\d+)$")


class FakeGoogle:
    """One server for both Google hosts: ``/token`` (OAuth 2.0) and ``/v24/...`` (Ads API).
    Records every request; answers what the test scripts per kind of call, else success."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.scripted: dict[str, list[tuple[int, dict[str, str], Any]]] = {}
        self.tokens_issued = 0
        self.expires_in = 3599
        self.jobs = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = fake.kind(self.path)
                if kind == "token":
                    body: Any = {k: v[0] for k, v in parse_qs(raw.decode("ascii")).items()}
                else:
                    body = json.loads(raw)
                with fake.lock:
                    fake.requests.append({"kind": kind, "path": self.path, "headers": dict(self.headers),
                                          "body": body})
                    queue = fake.scripted.get(kind) or []
                    status, headers, answer = queue.pop(0) if queue else fake.success(kind, self.path)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json; charset=UTF-8", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def kind(path: str) -> str:
        if path == "/token":
            return "token"
        for suffix in ("create", "addOperations", "run"):
            if path.endswith(f":{suffix}"):
                return suffix
        return "unknown"

    def success(self, kind: str, path: str) -> tuple[int, dict[str, str], Any]:
        if kind == "token":
            self.tokens_issued += 1
            return 200, {}, {"access_token": f"ya29.token-{self.tokens_issued}", "expires_in": self.expires_in,
                             "scope": "https://www.googleapis.com/auth/adwords", "token_type": "Bearer"}
        if kind == "create":
            self.jobs += 1
            customer = path.split("/")[3]
            return 200, {}, {"resourceName": f"customers/{customer}/offlineUserDataJobs/{1000 + self.jobs}"}
        if kind == "addOperations":
            return 200, {}, {}
        if kind == "run":
            job = path.split("/v24/")[1].removesuffix(":run")
            return 200, {}, {"name": f"{job.replace('offlineUserDataJobs', 'operations')}"}
        return 404, {}, {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}

    def script(self, kind: str, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
        self.scripted.setdefault(kind, []).append((status, headers or {}, answer))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["kind"] == kind]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    g = FakeGoogle()
    yield g
    g.stop()


def rpc_error(code: int, status: str, message: str = "An error.", details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, "details": details or []}}


def ads_failure(*errors: tuple[dict[str, str], int | None]) -> dict[str, Any]:
    """A GoogleAdsFailure detail: each error's code and the operation index it names."""
    found = []
    for code, index in errors:
        error: dict[str, Any] = {"errorCode": code, "message": "The SHA256 encoded value is malformed."}
        if index is not None:
            error["location"] = {"fieldPathElements": [{"fieldName": "operations", "index": index},
                                                       {"fieldName": "create"}]}
        found.append(error)
    return {"@type": "type.googleapis.com/google.ads.googleads.v24.errors.GoogleAdsFailure",
            "errors": found, "requestId": "abc123"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def change(profile_id: str, audience: str = "pro", transition: str = "entered",
           profile: dict[str, Any] | None = None, *, emails: list[str] | None = None) -> OutboundMessage:
    if profile is None and emails is not None:
        profile = {"profile_id": profile_id, "traits": {}, "identifiers": {"email": emails}, "fields": {}}
    body = {"kind": "audience_membership", "destination_id": "google", "message_id": f"{profile_id}-{audience}",
            "audience_id": audience, "profile_id": profile_id, "transition": transition,
            "event": "Audience Entered" if transition == "entered" else "Audience Exited", "version": 3,
            "at": "2026-12-06T12:00:00Z", "profile": profile}
    return OutboundMessage(f"{audience}-{profile_id}-{transition}-3", body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def destination(google: FakeGoogle, **options: Any) -> GoogleCustomerMatchDestination:
    values: dict[str, Any] = {"customer_id": CUSTOMER, "credentials": CREDENTIALS, "base_url": google.url,
                              "oauth_url": google.url, **options}
    return GoogleCustomerMatchDestination(**values)


# --- the documented sequence --------------------------------------------------------------------

def test_an_entry_is_a_customer_match_job_created_filled_and_run(google: FakeGoogle) -> None:
    profile = {"profile_id": "p1",
               "traits": {"firstName": " Ana ", "lastName": "Silva", "address": {"country": "us",
                                                                                 "postalCode": "94105"}},
               "identifiers": {"email": ["test@example.com"], "phone": ["+14155550100"]}, "fields": {}}

    (outcome,) = destination(google, login_customer_id=MANAGER, user_list_ids={"pro": "555"}).send(
        [change("p1", profile=profile)])

    assert outcome.delivered
    assert [r["kind"] for r in google.requests] == ["token", "create", "addOperations", "run"]
    token, create, add, run = google.requests
    # OAuth 2.0 refresh-token grant, form-encoded.
    assert token["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert token["body"] == {"grant_type": "refresh_token", "client_id": CREDENTIALS.client_id,
                             "client_secret": CREDENTIALS.client_secret, "refresh_token": CREDENTIALS.refresh_token}
    assert "Authorization" not in token["headers"]
    # Every Ads API call: the access token, the developer token, the manager account.
    for request in (create, add, run):
        assert request["headers"]["Authorization"] == "Bearer ya29.token-1"
        assert request["headers"]["developer-token"] == "dev-token-abc"
        assert request["headers"]["login-customer-id"] == MANAGER
        assert request["headers"]["Content-Type"] == "application/json"
    assert create["path"] == f"/v24/customers/{CUSTOMER}/offlineUserDataJobs:create"
    assert create["body"] == {"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {
        "userList": f"customers/{CUSTOMER}/userLists/555"}}}
    assert add["path"] == f"/v24/customers/{CUSTOMER}/offlineUserDataJobs/1001:addOperations"
    assert add["body"] == {"enablePartialFailure": True, "operations": [{"create": {"userIdentifiers": [
        {"hashedEmail": TEST_AT_EXAMPLE_SHA256},
        {"hashedPhoneNumber": sha("+14155550100")},  # E.164 with "+"
        {"addressInfo": {"hashedFirstName": sha("ana"), "hashedLastName": sha("silva"),
                         "countryCode": "US", "postalCode": "94105"}},
    ]}}]}
    assert run["path"] == f"/v24/customers/{CUSTOMER}/offlineUserDataJobs/1001:run"
    assert run["body"] == {}


def test_without_a_manager_account_there_is_no_login_customer_id_header(google: FakeGoogle) -> None:
    destination(google).send([change("p1", emails=["a@example.com"])])
    create = google.of("create")[0]
    assert "login-customer-id" not in {k.lower() for k in create["headers"]}
    assert create["body"]["job"]["customerMatchUserListMetadata"]["userList"] == f"customers/{CUSTOMER}/userLists/pro"


def test_exits_are_remove_operations_in_their_own_job_per_user_list(google: FakeGoogle) -> None:
    messages = [change("p1", "pro", emails=["a@example.com"]), change("p2", "pro", "exited", emails=["b@example.com"]),
                change("p3", "trial", emails=["c@example.com"]), change("p4", "pro", emails=["d@example.com"])]

    outcomes = destination(google, user_list_ids={"pro": "111", "trial": "222"}).send(messages)

    assert all(o.delivered for o in outcomes)
    lists = [r["body"]["job"]["customerMatchUserListMetadata"]["userList"] for r in google.of("create")]
    assert lists == [f"customers/{CUSTOMER}/userLists/111", f"customers/{CUSTOMER}/userLists/111",
                     f"customers/{CUSTOMER}/userLists/222"]
    adds = google.of("addOperations")
    assert adds[0]["body"]["operations"] == [{"create": {"userIdentifiers": [{"hashedEmail": sha("a@example.com")}]}},
                                             {"create": {"userIdentifiers": [{"hashedEmail": sha("d@example.com")}]}}]
    assert adds[1]["body"]["operations"] == [{"remove": {"userIdentifiers": [{"hashedEmail": sha("b@example.com")}]}}]
    assert adds[1]["path"].endswith("/offlineUserDataJobs/1002:addOperations")
    assert [r["path"].rsplit("/", 1)[1] for r in google.of("run")] == ["1001:run", "1002:run", "1003:run"]
    assert len(google.of("token")) == 1  # one access token for the whole batch


def test_consent_is_sent_in_the_job_metadata_when_configured(google: FakeGoogle) -> None:
    destination(google, consent={"adUserData": "GRANTED", "adPersonalization": "GRANTED"}).send(
        [change("p1", emails=["a@example.com"])])
    metadata = google.of("create")[0]["body"]["job"]["customerMatchUserListMetadata"]
    assert metadata["consent"] == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}


def test_the_consent_setting_reaches_the_job_metadata_and_without_it_none_is_sent(
        google: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_GOOGLE_ADS_API_URL", google.url)
    monkeypatch.setenv("CDP_GOOGLE_OAUTH_URL", google.url)
    configured = build(config(consent={"ad_user_data": "GRANTED", "ad_personalization": "DENIED"}),
                       lambda name: secret_json(), lambda service: None)
    configured.send([change("p1", emails=["a@example.com"])])
    build(config(), lambda name: secret_json(), lambda service: None).send([change("p2", emails=["b@example.com"])])

    first, second = (r["body"]["job"]["customerMatchUserListMetadata"] for r in google.of("create"))
    assert first["consent"] == {"adUserData": "GRANTED", "adPersonalization": "DENIED"}
    assert "consent" not in second


@pytest.mark.parametrize("consent", [{"ad_user_data": "YES", "ad_personalization": "GRANTED"},
                                     {"ad_user_data": "GRANTED"},
                                     {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED", "extra": "x"}])
def test_a_consent_setting_that_is_not_googles_is_refused_at_validation(consent: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="consent"):
        config(consent=consent)


# --- batching -------------------------------------------------------------------------------------

def test_100000_identifiers_fit_one_request_and_one_more_user_starts_a_second(google: FakeGoogle) -> None:
    # 5,001 users of 20 emails each: 100,020 identifiers, so 5,000 users (100,000) then 1.
    messages = [change(f"p{n}", emails=[f"u{n}.{k}@example.com" for k in range(20)]) for n in range(5_001)]

    outcomes = destination(google).send(messages)

    assert all(o.delivered for o in outcomes)
    adds = google.of("addOperations")
    counts = [sum(len(op["create"]["userIdentifiers"]) for op in r["body"]["operations"]) for r in adds]
    assert counts == [GOOGLE_MAX_IDENTIFIERS_PER_REQUEST, 20]
    assert [len(r["body"]["operations"]) for r in adds] == [5_000, 1]
    first_of_second = adds[1]["body"]["operations"][0]["create"]["userIdentifiers"][0]
    assert first_of_second == {"hashedEmail": sha("u5000.0@example.com")}
    assert len(google.of("create")) == len(google.of("run")) == 1  # one job holds both requests


def test_a_smaller_identifier_budget_splits_without_splitting_a_user(google: FakeGoogle) -> None:
    messages = [change(f"p{n}", emails=[f"u{n}.{k}@example.com" for k in range(n + 1)]) for n in range(4)]
    destination(google, max_identifiers=20).send(messages)  # 1 + 2 + 3 + 4 = 10 identifiers: one request
    assert len(google.of("addOperations")) == 1
    google.requests.clear()
    messages = [change(f"p{n}", emails=[f"u{n}.{k}@example.com" for k in range(8)]) for n in range(5)]
    destination(google, max_identifiers=20).send(messages)  # 8 + 8 | 8 + 8 | 8
    assert [len(r["body"]["operations"]) for r in google.of("addOperations")] == [2, 2, 1]
    with pytest.raises(ValueError, match="max_identifiers"):
        destination(google, max_identifiers=100_001)


def test_a_failed_add_request_decides_only_the_users_it_carried(google: FakeGoogle) -> None:
    messages = [change(f"p{n}", emails=[f"u{n}.{k}@example.com" for k in range(10)]) for n in range(3)]
    google.script("addOperations", 200, {})
    google.script("addOperations", 429, rpc_error(429, "RESOURCE_EXHAUSTED", "Too many requests."))

    outcomes = destination(google, max_identifiers=20).send(messages)

    assert [o.verdict for o in outcomes] == ["delivered", "delivered", "retry"]
    assert len(google.of("run")) == 1  # the job runs with what was accepted


# --- OAuth ----------------------------------------------------------------------------------------

def test_the_access_token_is_cached_until_shortly_before_it_expires(google: FakeGoogle) -> None:
    clock = Clock()
    dest = destination(google, clock=clock)
    dest.send([change("p1", emails=["a@example.com"])])
    clock.now += 3000  # within the token's hour
    dest.send([change("p2", emails=["b@example.com"])])
    assert len(google.of("token")) == 1
    clock.now += 560  # 3560 s: within a minute of Google's 3599 s
    dest.send([change("p3", emails=["c@example.com"])])
    assert len(google.of("token")) == 2
    assert google.of("run")[-1]["headers"]["Authorization"] == "Bearer ya29.token-2"


def test_a_401_refreshes_the_token_once_and_repeats_the_call(google: FakeGoogle) -> None:
    google.script("create", 401, rpc_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."))

    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])

    assert outcome.delivered
    creates = google.of("create")
    assert [r["headers"]["Authorization"] for r in creates] == ["Bearer ya29.token-1", "Bearer ya29.token-2"]
    assert len(google.of("token")) == 2


def test_a_second_401_is_permanent(google: FakeGoogle) -> None:
    for _ in range(2):
        google.script("create", 401, rpc_error(401, "UNAUTHENTICATED", "Invalid credentials."))
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == "permanent" and "UNAUTHENTICATED" in outcome.reason
    assert len(google.of("create")) == 2 and not google.of("addOperations")


@pytest.mark.parametrize(("status", "answer", "verdict"), [
    (400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, "permanent"),
    (401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}, "permanent"),
    (503, {"error": "temporarily_unavailable"}, "retry"),
])
def test_a_refused_token_refresh_decides_for_the_whole_batch(google: FakeGoogle, status: int, answer: Any,
                                                             verdict: str) -> None:
    google.script("token", status, answer)
    outcomes = destination(google).send([change("p1", emails=["a@example.com"]),
                                         change("p2", "trial", emails=["b@example.com"])])
    assert [o.verdict for o in outcomes] == [verdict, verdict]
    assert outcomes[0].reason.startswith(f"Google OAuth token refresh: HTTP {status}")
    assert CREDENTIALS.refresh_token not in outcomes[0].reason and CREDENTIALS.client_secret not in outcomes[0].reason


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "rpc_status", "verdict"), [
    (429, "RESOURCE_EXHAUSTED", "retry"),
    (503, "UNAVAILABLE", "retry"),
    (500, "INTERNAL", "retry"),
    (504, "DEADLINE_EXCEEDED", "retry"),
    (400, "INVALID_ARGUMENT", "permanent"),
    (403, "PERMISSION_DENIED", "permanent"),
])
def test_rpc_statuses_decide_retry_or_dead_letter(google: FakeGoogle, status: int, rpc_status: str,
                                                  verdict: str) -> None:
    google.script("create", status, rpc_error(status, rpc_status))
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == verdict
    assert outcome.reason == f"Google Ads API: HTTP {status} {rpc_status}"
    assert not google.of("addOperations")  # no job, nothing added


def test_a_quota_error_keeps_googles_retry_delay(google: FakeGoogle) -> None:
    failure = {"@type": "type.googleapis.com/google.ads.googleads.v24.errors.GoogleAdsFailure",
               "errors": [{"errorCode": {"quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED"},
                           "message": "Too many requests. Retry in 30 seconds.",
                           "details": {"quotaErrorDetails": {"rateScope": "DEVELOPER", "rateName": "Requests",
                                                             "retryDelay": "30s"}}}]}
    google.script("addOperations", 429, rpc_error(429, "RESOURCE_EXHAUSTED", "Too many requests.", [failure]))

    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])

    assert outcome.verdict == "retry" and outcome.retry_after_s == 30
    assert outcome.reason == "Google Ads API: HTTP 429 RESOURCE_EXHAUSTED: quotaError.RESOURCE_TEMPORARILY_EXHAUSTED"


def test_an_invalid_argument_names_googles_error_codes_but_no_identifier(google: FakeGoogle) -> None:
    failure = ads_failure(({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, 0))
    failure["errors"][0]["trigger"] = {"stringValue": sha("a@example.com")}
    google.script("addOperations", 400, rpc_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                                                  [failure]))

    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])

    assert outcome.verdict == "permanent"
    assert outcome.reason == ("Google Ads API: HTTP 400 INVALID_ARGUMENT: "
                              "offlineUserDataJobError.INVALID_SHA256_FORMAT")
    assert sha("a@example.com") not in outcome.reason
    assert not google.of("run")  # nothing accepted, nothing run


def test_a_partial_failure_dead_letters_the_named_operations_only(google: FakeGoogle) -> None:
    messages = [change(f"p{n}", emails=[f"u{n}@example.com"]) for n in range(3)]
    google.script("addOperations", 200, {"partialFailureError": {
        "code": 3, "message": "Multiple errors in 'details'.",
        "details": [ads_failure(({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, 1))]}})

    outcomes = destination(google).send(messages)

    assert [o.verdict for o in outcomes] == ["delivered", "permanent", "delivered"]
    assert outcomes[1].reason == "Google Ads API rejected the operation: offlineUserDataJobError.INVALID_SHA256_FORMAT"
    assert len(google.of("run")) == 1


def test_a_partial_failure_not_tied_to_an_operation_decides_the_whole_request(google: FakeGoogle) -> None:
    messages = [change(f"p{n}", emails=[f"u{n}@example.com"]) for n in range(2)]
    google.script("addOperations", 200, {"partialFailureError": {
        "code": 3, "message": "x", "details": [ads_failure(({"mutateError": "RESOURCE_NOT_FOUND"}, None))]}})
    outcomes = destination(google).send(messages)
    assert [o.verdict for o in outcomes] == ["permanent", "permanent"]
    assert not google.of("run")


def test_a_failed_run_retries_every_message_of_the_job(google: FakeGoogle) -> None:
    google.script("run", 503, rpc_error(503, "UNAVAILABLE", "The service is currently unavailable."))
    outcomes = destination(google).send([change("p1", emails=["a@example.com"]),
                                         change("p2", emails=["b@example.com"])])
    assert [o.verdict for o in outcomes] == ["retry", "retry"]


def test_an_answer_that_is_not_json_falls_back_to_the_http_status(google: FakeGoogle) -> None:
    google.script("create", 502, b"<html>Bad gateway</html>")
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == "retry" and outcome.reason == "Google Ads API: HTTP 502"


def test_a_job_without_a_resource_name_is_retried_not_guessed(google: FakeGoogle) -> None:
    google.script("create", 200, {"resourceName": "customers/1/offlineUserDataJobs/../../x"})
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == "retry" and not google.of("addOperations")


def test_messages_without_a_usable_identifier_are_dead_lettered_unsent(google: FakeGoogle) -> None:
    gone = change("p1", profile=None)
    name_only = change("p2", profile={"profile_id": "p2", "traits": {"firstName": "Ana"}, "identifiers": {},
                                      "fields": {}})
    event = OutboundMessage("evt-1", {"kind": "event", "profile_id": "p3", "triggers": ["t"], "event": {},
                                      "profile": None})

    outcomes = destination(google).send([gone, name_only, event])

    assert [o.verdict for o in outcomes] == ["permanent", "permanent", "permanent"]
    assert outcomes[0].reason == outcomes[1].reason == "no usable identifier"
    assert google.requests == []  # not even a token


# --- build ----------------------------------------------------------------------------------------

def config(**settings: Any) -> DestinationConfig:
    return DestinationConfig.model_validate({
        "id": "google-ads", "name": "Google", "type": "google_customer_match", "audiences": ["pro"],
        "settings": {"customer_id": CUSTOMER, "credentials_secret_name": "cdp/google/ads", **settings}})


def secret_json(**overrides: str) -> str:
    return json.dumps({"developer_token": CREDENTIALS.developer_token, "client_id": CREDENTIALS.client_id,
                       "client_secret": CREDENTIALS.client_secret, "refresh_token": CREDENTIALS.refresh_token,
                       **overrides})


def test_build_reads_the_credentials_secret_and_the_local_overrides(google: FakeGoogle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def secret(name: str) -> str:
        asked.append(name)
        return secret_json()

    monkeypatch.setenv("CDP_GOOGLE_ADS_API_URL", google.url)
    monkeypatch.setenv("CDP_GOOGLE_OAUTH_URL", google.url)
    monkeypatch.setenv("CDP_GOOGLE_USER_LIST_IDS", json.dumps({"google-ads": {"pro": "4242"}}))
    dest = build(config(login_customer_id=MANAGER), secret, lambda service: None)

    (outcome,) = dest.send([change("p1", emails=["a@example.com"])])

    assert outcome.delivered and asked == ["cdp/google/ads"]
    create = google.of("create")[0]
    assert create["headers"]["login-customer-id"] == MANAGER
    assert create["body"]["job"]["customerMatchUserListMetadata"]["userList"] == f"customers/{CUSTOMER}/userLists/4242"


def test_build_defaults_to_googles_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CDP_GOOGLE_ADS_API_URL", "CDP_GOOGLE_OAUTH_URL", "CDP_GOOGLE_USER_LIST_IDS"):
        monkeypatch.delenv(name, raising=False)
    dest = build(config(), lambda name: secret_json(), lambda service: None)
    assert isinstance(dest, GoogleCustomerMatchDestination)
    assert dest.base_url == "https://googleads.googleapis.com" and dest.oauth_url == "https://oauth2.googleapis.com"
    assert dest.api_version == "v24" and dest.login_customer_id is None and dict(dest.user_list_ids) == {}


def test_build_refuses_an_incomplete_credentials_secret() -> None:
    with pytest.raises(ValueError, match="refresh_token"):
        build(config(), lambda name: secret_json(refresh_token=""), lambda service: None)


@pytest.mark.skipif("user_list_ids" not in GoogleCustomerMatchSettings.model_fields,
                    reason="the settings model has no user_list_ids yet")
def test_build_prefers_the_settings_user_list_ids_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_GOOGLE_USER_LIST_IDS", '{"pro": "1", "trial": "2"}')
    dest = build(config(user_list_ids={"pro": "3"}), lambda name: secret_json(), lambda service: None)
    assert isinstance(dest, GoogleCustomerMatchDestination)
    assert dict(dest.user_list_ids) == {"pro": "3", "trial": "2"}


def test_a_concurrent_modification_is_retried_though_google_calls_it_invalid_argument(google: FakeGoogle) -> None:
    google.script("run", 400, rpc_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                                        [ads_failure(({"databaseError": "CONCURRENT_MODIFICATION"}, None))]))
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == "retry"
    assert outcome.reason == "Google Ads API: HTTP 400 INVALID_ARGUMENT: databaseError.CONCURRENT_MODIFICATION"


def test_a_transient_partial_failure_retries_that_operation_only(google: FakeGoogle) -> None:
    google.script("addOperations", 200, {"partialFailureError": {"code": 3, "message": "x", "details": [
        ads_failure(({"internalError": "TRANSIENT_ERROR"}, 0),
                    ({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, 2))]}})
    outcomes = destination(google).send([change(f"p{n}", emails=[f"u{n}@example.com"]) for n in range(3)])
    assert [o.verdict for o in outcomes] == ["retry", "delivered", "permanent"]


def test_a_large_partial_failure_answer_is_read_whole(google: FakeGoogle) -> None:
    # 3,000 failed operations: an answer far over a small read buffer must not pass for "no failures".
    failed = [({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, n) for n in range(0, 6_000, 2)]
    google.script("addOperations", 200, {"partialFailureError": {"code": 3, "message": "x",
                                                                 "details": [ads_failure(*failed)]}})
    outcomes = destination(google).send([change(f"p{n}", emails=[f"u{n}@example.com"]) for n in range(6_000)])
    assert [o.verdict for o in outcomes[:4]] == ["permanent", "delivered", "permanent", "delivered"]
    assert sum(o.verdict == "permanent" for o in outcomes) == 3_000


def test_an_unreadable_add_answer_is_retried_and_the_job_not_run(google: FakeGoogle) -> None:
    google.script("addOperations", 200, b"<html>proxy</html>")
    (outcome,) = destination(google).send([change("p1", emails=["a@example.com"])])
    assert outcome.verdict == "retry" and not google.of("run")
