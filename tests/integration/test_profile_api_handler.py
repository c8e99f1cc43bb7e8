"""The Profile API handler on moto: HTTP API v2 events of its route, tokens, layout items, and the
whole way from the collector through the stream consumer to a profile read."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, unquote

import boto3
import pytest

from cdp import resources
from cdp.access_tokens import AccessTokenRegistry
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.identity.config import IdentityConfig
from cdp.local.lambda_events import http_api_event
from tests.conftest import load_handler
from tests.integration.conftest import read_stream_as_lambda_event
from tests.integration.test_collection_pipeline import post
from tests.profile_layout import moto_writer, segment_event

profile_api = load_handler("profile_api")
consumer = load_handler("stream_consumer")

USERS = "/v1/spaces/default/collections/users/profiles"


@pytest.fixture
def token(aws: None) -> str:
    table = boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    registry = AccessTokenRegistry(table)
    registry.create_token("other space", "elsewhere", token="cdpat_elsewhere")
    return registry.create_token("tests", "default")[1]


def get(path: str, token: str | None, ctx: Any, **query: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET through the handler with the event API Gateway sends for the route (path decoded)."""
    decoded = unquote(path)
    headers = [("Host", "api.example.com"), ("User-Agent", "test")]
    if token is not None:
        headers.append(("Authorization", "Basic " + base64.b64encode(f"{token}:".encode()).decode()))
    raw_query = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    event = http_api_event(method="GET", path=decoded, raw_query=raw_query, headers=headers,
                           route_key=resources.PROFILE_API_ROUTE.route_key,
                           path_parameters={"proxy": decoded.removeprefix("/v1/spaces/")})
    response = profile_api.handler(event, ctx)
    return response["statusCode"], json.loads(response["body"]), response.get("headers", {})


def test_traits_by_an_email_in_any_case(token, lambda_context):
    moto_writer().profile("p1", ["user_id:ana", "email:ana@example.com"],
                          traits={"plan": ("pro", "2026-03-01T00:00:00.000Z", "m1")})

    status, body, headers = get(f"{USERS}/email:Ana@Example.com/traits", token, lambda_context)

    assert status == 200, body
    assert body["traits"] == {"plan": "pro"}
    assert body["cursor"]["has_more"] is False
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"


def test_401_403_and_404_answers_are_json(token, lambda_context):
    moto_writer().profile("p1", ["user_id:ana"])

    status, body, headers = get(f"{USERS}/user_id:ana/traits", None, lambda_context)
    assert status == 401 and body["error"]["code"] == "authentication_error"
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert get(f"{USERS}/user_id:ana/traits", "cdpat_wrong", lambda_context)[0] == 401
    status, body, _ = get(f"{USERS}/user_id:ana/traits", "cdpat_elsewhere", lambda_context)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body, _ = get(f"{USERS}/user_id:bob/traits", token, lambda_context)
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = get(f"{USERS}/user_id:ana/nothing", token, lambda_context)
    assert status == 404


def test_a_revoked_token_stops_working_after_the_cache_time(token, lambda_context, monkeypatch):
    moto_writer().profile("p1", ["user_id:ana"])
    table = boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    registry = AccessTokenRegistry(table)
    revocable = registry.create_token("short-lived", "default", token_id="tok_short")[1]
    assert get(f"{USERS}/user_id:ana/traits", revocable, lambda_context)[0] == 200

    registry.revoke("tok_short")
    profile_api.dependencies.cache_clear()  # a new execution environment (or the cache expired)
    assert get(f"{USERS}/user_id:ana/traits", revocable, lambda_context)[0] == 401


def test_identifier_values_are_url_decoded_once(token, lambda_context):
    moto_writer().profile("p1", ["phone:+14155550123", "user_id:a/b?c#d%25"])

    assert get(f"{USERS}/phone:%2B14155550123/traits", token, lambda_context)[0] == 200
    assert get(f"{USERS}/{quote('user_id:a/b?c#d%25', safe=':')}/traits", token, lambda_context)[0] == 200


def test_events_page_newest_first_through_the_handler(token, lambda_context):
    layout = moto_writer()
    layout.profile("p1", ["user_id:ana", "anonymous_id:laptop"])
    for n in range(7):
        layout.event(segment_event("track", f"m{n}", f"2026-03-0{n + 1}T00:00:00.000Z", event=f"E{n}",
                                   **({"userId": "ana"} if n % 2 else {"anonymousId": "laptop"})))
    layout.event(segment_event("track", "x", "2026-03-09T00:00:00.000Z", userId="bob", event="Other"))

    seen: list[str] = []
    query: dict[str, str] = {"limit": "3"}
    for _ in range(5):
        status, body, _ = get(f"{USERS}/user_id:ana/events", token, lambda_context, **query)
        assert status == 200, body
        seen.extend(e["message_id"] for e in body["data"])
        if not body["cursor"]["has_more"]:
            break
        query["next"] = body["cursor"]["next"]
    assert seen == ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]


def test_accounts_members_and_links(token, lambda_context):
    layout = moto_writer()
    layout.profile("p1", ["user_id:ana"], merged_from=["p0"])
    layout.merged("p0", into="p1")
    layout.profile("p2", ["user_id:bob"])
    layout.account("acme", traits={"plan": ("enterprise", "2026-03-01T00:00:00.000Z", "g1")})
    for pid in ("p0", "p1", "p2"):
        layout.membership(pid, "acme")

    accounts = "/v1/spaces/default/collections/accounts/profiles"
    status, body, _ = get(f"{accounts}/group_id:acme/links", token, lambda_context)
    assert status == 200
    assert [d["profile_id"] for d in body["data"]] == ["p1", "p2"]
    status, body, _ = get(f"{USERS}/user_id:ana/links", token, lambda_context)
    assert [d["external_ids"][0]["id"] for d in body["data"]] == ["acme"]
    status, body, _ = get(f"{accounts}/group_id:acme/traits", token, lambda_context)
    assert body["traits"] == {"plan": "enterprise"}


def test_collected_events_can_be_read_back_once_the_consumer_unified_them(token, write_key, lambda_context):
    calls = [
        ("/v1/page", {"anonymousId": "laptop-1", "name": "Pricing", "messageId": "e1",
                      "timestamp": "2026-03-01T10:00:00.000Z"}),
        ("/v1/identify", {"anonymousId": "laptop-1", "userId": "ana-1", "messageId": "e2",
                          "traits": {"email": "Ana@Example.com", "name": "Ana"},
                          "timestamp": "2026-03-02T10:00:00.000Z"}),
        ("/v1/track", {"userId": "ana-1", "event": "Order Completed", "messageId": "e3",
                       "properties": {"total": 30}, "timestamp": "2026-03-03T10:00:00.000Z"}),
        ("/v1/group", {"userId": "ana-1", "groupId": "acme", "traits": {"industry": "retail"},
                       "messageId": "e4", "timestamp": "2026-03-04T10:00:00.000Z"}),
    ]
    for path, body in calls:
        assert post(path, body, write_key, lambda_context)["statusCode"] == 200
    assert consumer.handler(read_stream_as_lambda_event(), lambda_context) == {"batchItemFailures": []}

    status, traits, _ = get(f"{USERS}/email:ana@example.com/traits", token, lambda_context)
    assert status == 200, traits
    assert traits["traits"] == {"email": "Ana@Example.com", "name": "Ana"}
    _, events, _ = get(f"{USERS}/anonymous_id:laptop-1/events", token, lambda_context)
    assert [e["message_id"] for e in events["data"]] == ["e4", "e3", "e2", "e1"]
    _, ids, _ = get(f"{USERS}/user_id:ana-1/external_ids", token, lambda_context)
    assert {(d["type"], d["id"]) for d in ids["data"]} == {
        ("user_id", "ana-1"), ("anonymous_id", "laptop-1"), ("email", "ana@example.com")}
    _, links, _ = get(f"{USERS}/user_id:ana-1/links", token, lambda_context)
    assert [d["external_ids"][0]["id"] for d in links["data"]] == ["acme"]
    _, account, _ = get("/v1/spaces/default/collections/accounts/profiles/group_id:acme/traits", token,
                        lambda_context)
    assert account["traits"] == {"industry": "retail"}
    _, metadata, _ = get(f"{USERS}/user_id:ana-1/metadata", token, lambda_context)
    assert metadata["metadata"]["first_seen"] == "2026-03-01T10:00:00.000Z"
    assert metadata["metadata"]["last_seen"] == "2026-03-04T10:00:00.000Z"


def test_identifiers_are_normalised_with_the_identity_settings_in_force(token, lambda_context):
    moto_writer().profile("p1", ["phone:+14155550123"])
    assert get(f"{USERS}/phone:(415) 555-0123/traits", token, lambda_context)[0] == 400  # no default region

    store = IdentityConfigStore(boto3.client("dynamodb"), resources.IDENTITY_TABLE.local_name, IdentityConfig())
    store.put(IdentityConfig(default_phone_region="US"))  # as an admin would, at run time
    profile_api.dependencies.cache_clear()
    assert get(f"{USERS}/phone:(415) 555-0123/traits", token, lambda_context)[0] == 200
