"""Profile API decisions: paths, identifiers, authorization, parameters, cursors and response shapes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from cdp.access_tokens import AccessToken, authorize, token_from_authorization
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.profile_api import (
    ApiError,
    ApiRequest,
    ProfileApi,
    decode_cursor,
    encode_cursor,
    lookup_identifier,
    parse_limit,
    parse_path,
)
from cdp.profiles import ProfileReader
from tests.profile_layout import MemoryProfileTables, segment_event

TOKEN = "cdpat_unit"
OTHER_SPACE_TOKEN = "cdpat_other"
BASE = "/v1/spaces/default/collections/users/profiles"


def basic(token: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{token}:{password}".encode()).decode()


def tokens(token: str) -> AccessToken | None:
    known = {
        TOKEN: AccessToken("tok_1", "unit", "default", True, "at#1"),
        OTHER_SPACE_TOKEN: AccessToken("tok_2", "other", "other", True, "at#2"),
        "cdpat_revoked": AccessToken("tok_3", "old", "default", False, "at#3"),
    }
    return known.get(token)


@pytest.fixture
def tables() -> MemoryProfileTables:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p-ana", ["user_id:ana", "email:ana@example.com", "anonymous_id:laptop", "phone:+14155550123"],
                   traits={"name": ("Ana", "2026-03-02T10:00:00.000Z", "m2"),
                           "plan": ("pro", "2026-03-04T10:00:00.000Z", "m4"),
                           "city": ("Lisbon", "2026-03-02T10:00:00.000Z", "m2")},
                   first_seen="2026-03-01T10:00:00.000Z", last_seen_day="2026-03-04", merged_from=["p-old"],
                   updated_at="2026-03-04T10:00:01.000000+00:00")
    layout.merged("p-old", into="p-ana")
    layout.profile("p-bob", ["user_id:bob", "email:bob@example.com"],
                   traits={"name": ("Bob", "2026-03-02T10:00:00.000Z", "b1")})
    layout.event(segment_event("page", "m1", "2026-03-01T10:00:00.000Z", anonymousId="laptop", name="Home"))
    layout.event(segment_event("identify", "m2", "2026-03-02T10:00:00.000Z", userId="ana", anonymousId="laptop",
                               traits={"name": "Ana"}))
    layout.event(segment_event("track", "m4", "2026-03-04T10:00:00.000Z", userId="ana", event="Order Completed",
                               properties={"total": 30}, anonymousId=None,  # SDKs send null ids
                               context={"locale": "pt-PT", "ip": "203.0.113.7"}))
    layout.event(segment_event("track", "b1", "2026-03-05T10:00:00.000Z", userId="bob", event="Order Completed"))
    layout.account("acme", traits={"industry": ("retail", "2026-03-03T10:00:00.000Z", "g1")})
    layout.membership("p-old", "acme")
    layout.membership("p-bob", "acme")
    layout.merge_log("p-ana", "p-old", ["anonymous_id:laptop"], "m2", "2026-03-02T10:00:00.000Z",
                     "2026-03-02T10:00:05Z")
    layout.blocked("p-ana", "m9", "2026-03-06T10:00:00.000Z", ["user_id:carl", "device_id:d1"], ["p-carl"])
    return tables


def call(tables: MemoryProfileTables, path: str, token: str | None = TOKEN, **query: str) -> tuple[int, dict[str, Any],
                                                                                              dict[str, str]]:
    api = ProfileApi(ProfileReader(tables), tokens, "default", IdentityConfig())
    response = api.handle(ApiRequest(path, query, basic(token) if token else None))
    return response.status, response.body, response.headers


# --- paths and identifiers ----------------------------------------------------------------------


def test_a_profile_path_names_space_collection_identifier_and_resource() -> None:
    target = parse_path("/v1/spaces/s1/collections/users/profiles/email:ana@example.com/traits")
    assert (target.space, target.collection, target.identifier, target.resource) == (
        "s1", "users", "email:ana@example.com", "traits")
    # The value may hold a slash (decoded %2F): the resource is the last segment.
    assert parse_path("/v1/spaces/s1/collections/users/profiles/user_id:a/b/events").identifier == "user_id:a/b"


@pytest.mark.parametrize("path", [
    "/v1/spaces/s1/collections/users/profiles/user_id:a",  # no resource
    "/v1/spaces/s1/collections/teams/profiles/user_id:a/traits",
    "/v1/spaces/s1/collections/users/profiles/user_id:a/audiences",
    "/v1/spaces/s1/collections/users/people/user_id:a/traits",
    "/v1/spaces/s1/users/profiles/user_id:a/traits",
])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(ApiError) as error:
        parse_path(path)
    assert error.value.status == 404


@pytest.mark.parametrize(("text", "expected"), [
    ("email:Ana@Example.com", Identifier("email", "ana@example.com")),
    ("email: \uff21\uff2e\uff21@example.com ", Identifier("email", "ana@example.com")),  # fullwidth folds
    ("EMAIL:ana@example.com", Identifier("email", "ana@example.com")),
    ("phone:+1 (415) 555-0123", Identifier("phone", "+14155550123")),
    ("user_id: ana ", Identifier("user_id", "ana")),
    ("anonymous_id:laptop", Identifier("anonymous_id", "laptop")),
    ("Zendesk_ID:Z-1", Identifier("zendesk_id", "Z-1")),
    ("user_id:a:b", Identifier("user_id", "a:b")),
])
def test_identifiers_are_normalised_as_the_consumer_normalises_them(text: str, expected: Identifier) -> None:
    assert lookup_identifier(text, IdentityConfig()) == expected


def test_a_phone_without_country_code_needs_the_deployments_default_region() -> None:
    with pytest.raises(ApiError) as error:
        lookup_identifier("phone:4155550123", IdentityConfig())
    assert error.value.status == 400
    assert lookup_identifier("phone:(415) 555-0123", IdentityConfig(default_phone_region="US")) == Identifier(
        "phone", "+14155550123")


@pytest.mark.parametrize("text", ["ana@example.com", ":ana", "email:not-an-email", "user_id:  ", "1x:y"])
def test_malformed_identifiers_are_400(text: str) -> None:
    with pytest.raises(ApiError) as error:
        lookup_identifier(text, IdentityConfig())
    assert error.value.status == 400 and error.value.code == "validation_error"


# --- parameters and cursors ----------------------------------------------------------------------


def test_limits_default_per_resource_and_are_bounded() -> None:
    assert parse_limit({}, "traits") == 10
    assert parse_limit({}, "links") == 20
    assert parse_limit({"limit": "200"}, "traits") == 200
    for bad in ("0", "101", "ten", "-1"):
        with pytest.raises(ApiError):
            parse_limit({"limit": bad}, "events")


def test_cursors_round_trip_and_refuse_other_lists_and_garbage() -> None:
    cursor = encode_cursor("events", ["2026-03-01T10:00:00.000Z#m1", "abc"])
    assert decode_cursor("events", cursor) == ["2026-03-01T10:00:00.000Z#m1", "abc"]
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # safe in a query string
    for bad in (encode_cursor("traits", "x"), "!!!", "e30", base64.urlsafe_b64encode(b"[1]").decode()):
        with pytest.raises(ApiError) as error:
            decode_cursor("events", bad)
        assert error.value.status == 400


# --- authentication and authorization --------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (basic("tok"), "tok"),
    (basic("tok", "ignored"), "tok"),
    ("Bearer tok", "tok"),
    ("bearer  tok ", "tok"),
    (None, None),
    ("", None),
    ("Basic !!!", None),
    ("Basic " + base64.b64encode(b":pw").decode(), None),
    ("Digest tok", None),
])
def test_the_token_is_the_basic_username_or_a_bearer_token(header: str | None, expected: str | None) -> None:
    assert token_from_authorization(header) == expected


def test_authorization_decisions() -> None:
    token = AccessToken("tok_1", "n", "default", True, "at#1")
    assert authorize(token, "default") == "allowed"
    assert authorize(token, "other") == "forbidden"
    assert authorize(None, "default") == "unauthenticated"
    assert authorize(AccessToken("tok_1", "n", "default", False, "at#1"), "default") == "unauthenticated"


def test_requests_without_a_valid_token_are_401_with_www_authenticate(tables: MemoryProfileTables) -> None:
    for token in (None, "cdpat_unknown", "cdpat_revoked"):
        tables.items_read = 0
        status, body, headers = call(tables, f"{BASE}/user_id:ana/traits", token)
        assert status == 401
        assert body["error"]["code"] == "authentication_error"
        assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert tables.items_read == 0  # nothing is read for an unauthenticated caller


def test_a_token_of_another_space_is_403_and_an_unknown_space_404(tables: MemoryProfileTables) -> None:
    status, body, _ = call(tables, f"{BASE}/user_id:ana/traits", OTHER_SPACE_TOKEN)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    other = "/v1/spaces/other/collections/users/profiles/user_id:ana/traits"
    status, body, _ = call(tables, other, OTHER_SPACE_TOKEN)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert "does not exist" in body["error"]["message"]


def test_unknown_profiles_and_paths_are_404_with_a_json_error(tables: MemoryProfileTables) -> None:
    status, body, _ = call(tables, f"{BASE}/email:nobody@example.com/traits")
    assert (status, body) == (404, {"error": {"code": "not_found", "message": "Profile was not found."}})
    status, body, _ = call(tables, f"{BASE}/user_id:ana/audiences")
    assert status == 404 and "Unknown resource" in body["error"]["message"]


# --- response shapes -------------------------------------------------------------------------------------


def test_traits_are_found_by_any_identifier_spelling(tables: MemoryProfileTables) -> None:
    for identifier in ("email:Ana@Example.com", "user_id:ana", "phone:+14155550123",
                       "profile_id:p-old", "anonymous_id:laptop"):
        status, body, headers = call(tables, f"{BASE}/{identifier}/traits")
        assert status == 200, identifier
        assert body["traits"] == {"city": "Lisbon", "name": "Ana", "plan": "pro"}
        assert body["cursor"] == {"url": f"{BASE}/{identifier}/traits", "has_more": False, "next": "",
                                  "limit": 10}
        assert headers["Cache-Control"] == "no-store"


def test_traits_page_by_name_filter_by_include_and_verbose_shows_when(tables: MemoryProfileTables) -> None:
    _, first, _ = call(tables, f"{BASE}/user_id:ana/traits", limit="2")
    assert first["traits"] == {"city": "Lisbon", "name": "Ana"} and first["cursor"]["has_more"] is True
    _, second, _ = call(tables, f"{BASE}/user_id:ana/traits", limit="2", next=first["cursor"]["next"])
    assert second["traits"] == {"plan": "pro"} and second["cursor"]["has_more"] is False

    _, only, _ = call(tables, f"{BASE}/user_id:ana/traits", include="plan,missing")
    assert only["traits"] == {"plan": "pro"}
    _, verbose, _ = call(tables, f"{BASE}/user_id:ana/traits", verbose="true", include="plan")
    assert verbose["traits"] == {"plan": {"value": "pro", "updated_at": "2026-03-04T10:00:00.000Z",
                                          "message_id": "m4"}}


def test_external_ids_list_the_profiles_identifiers(tables: MemoryProfileTables) -> None:
    _, body, _ = call(tables, f"{BASE}/user_id:ana/external_ids")
    assert body["data"] == [
        {"id": "laptop", "type": "anonymous_id", "collection": "users", "encoding": "none"},
        {"id": "ana@example.com", "type": "email", "collection": "users", "encoding": "none"},
        {"id": "+14155550123", "type": "phone", "collection": "users", "encoding": "none"},
        {"id": "ana", "type": "user_id", "collection": "users", "encoding": "none"},
    ]
    _, emails, _ = call(tables, f"{BASE}/user_id:ana/external_ids", include="email")
    assert [d["id"] for d in emails["data"]] == ["ana@example.com"]


def test_events_are_the_profiles_own_newest_first_in_segments_shape(tables: MemoryProfileTables) -> None:
    _, body, _ = call(tables, f"{BASE}/email:ana@example.com/events", limit="2")
    assert [e["message_id"] for e in body["data"]] == ["m4", "m2"]
    latest = body["data"][0]
    assert latest == {
        "type": "track", "event": "Order Completed", "properties": {"total": 30},
        "context": {"locale": "pt-PT"}, "user_id": "ana", "timestamp": "2026-03-04T10:00:00.000Z",
        "received_at": "2026-03-04T10:00:00.000Z", "message_id": "m4", "source_id": "src_test",
        "external_ids": [{"id": "ana", "type": "user_id", "collection": "users", "encoding": "none"}],
        "related": {"users": "p-ana"},
    }
    _, rest, _ = call(tables, f"{BASE}/email:ana@example.com/events", limit="2", next=body["cursor"]["next"])
    assert [e["message_id"] for e in rest["data"]] == ["m1"] and rest["cursor"]["has_more"] is False

    _, tracks, _ = call(tables, f"{BASE}/user_id:ana/events", include="Order Completed")
    assert [e["message_id"] for e in tracks["data"]] == ["m4"]
    _, no_pages, _ = call(tables, f"{BASE}/user_id:ana/events", exclude="page")
    assert [e["message_id"] for e in no_pages["data"]] == ["m4", "m2"]
    status, error, _ = call(tables, f"{BASE}/user_id:ana/events", sort="asc")
    assert status == 400 and error["error"]["code"] == "validation_error"


def test_ip_addresses_are_shown_only_where_the_deployment_keeps_them(tables: MemoryProfileTables) -> None:
    for keep_ip, shown in ((False, False), (True, True)):
        api = ProfileApi(ProfileReader(tables), tokens, "default", IdentityConfig(), keep_ip=keep_ip)
        for resource, query in (("events", {}), ("metadata", {"verbose": "true"})):
            body = api.handle(ApiRequest(f"{BASE}/user_id:ana/{resource}", query, basic(TOKEN))).body
            assert ("203.0.113.7" in repr(body)) is shown, (keep_ip, resource)


def test_a_response_holds_only_the_requested_profiles_data(tables: MemoryProfileTables) -> None:
    for resource in ("traits", "events", "external_ids", "links", "metadata"):
        _, body, _ = call(tables, f"{BASE}/user_id:ana/{resource}", limit="100" if resource != "metadata" else "")
        text = repr(body)
        assert "bob" not in text.lower() and "p-bob" not in text, resource
    # Blocked merges show which types were dropped, never the other person's values.
    _, meta, _ = call(tables, f"{BASE}/user_id:ana/metadata", verbose="true")
    assert "carl" not in repr(meta)


def test_links_of_a_user_are_accounts_of_it_and_of_profiles_merged_into_it(tables: MemoryProfileTables) -> None:
    _, body, _ = call(tables, f"{BASE}/user_id:ana/links")
    assert body["data"] == [{"to_collection": "accounts", "external_ids": [
        {"id": "acme", "type": "group_id", "collection": "accounts", "encoding": "none"}]}]


def test_metadata_has_dates_ids_and_with_verbose_the_merge_log(tables: MemoryProfileTables) -> None:
    _, body, _ = call(tables, f"{BASE}/user_id:ana/metadata")
    assert body == {"metadata": {
        "profile_id": "p-ana", "created_at": "2026-01-01T00:00:00.000000+00:00",
        "updated_at": "2026-03-04T10:00:01.000000+00:00", "expires_at": None,
        "first_seen": "2026-03-01T10:00:00.000Z", "last_seen": "2026-03-04T10:00:00.000Z",
        "last_seen_day": "2026-03-04", "last_message_id": "m4", "merged_from": ["p-old"]}}
    _, verbose, _ = call(tables, f"{BASE}/user_id:ana/metadata", verbose="true")
    meta = verbose["metadata"]
    assert meta["last_context"] == {"locale": "pt-PT"}  # from the newest event; no IP unless allowed
    assert meta["merges"] == [{"survivor": "p-ana", "merged": "p-old", "identifiers": ["anonymous_id:laptop"],
                               "message_id": "m2", "at": "2026-03-02T10:00:00.000Z",
                               "merged_at": "2026-03-02T10:00:05Z"}]
    assert meta["blocked_merges"] == [{"message_id": "m9", "at": "2026-03-06T10:00:00.000Z",
                                       "dropped_types": ["device_id", "user_id"]}]


def test_accounts_are_found_by_group_id_with_traits_members_and_metadata(tables: MemoryProfileTables) -> None:
    accounts = "/v1/spaces/default/collections/accounts/profiles"
    _, traits, _ = call(tables, f"{accounts}/group_id:acme/traits")
    assert traits["traits"] == {"industry": "retail"}
    _, ids, _ = call(tables, f"{accounts}/group_id: acme /external_ids")
    assert ids["data"] == [{"id": "acme", "type": "group_id", "collection": "accounts", "encoding": "none"}]
    _, links, _ = call(tables, f"{accounts}/group_id:acme/links", limit="1")
    assert [(d["to_collection"], d["profile_id"]) for d in links["data"]] == [("users", "p-bob")]
    _, more, _ = call(tables, f"{accounts}/group_id:acme/links", limit="1", next=links["cursor"]["next"])
    assert [d["profile_id"] for d in more["data"]] == ["p-ana"]  # member p-old, merged into p-ana
    assert {"id": "ana", "type": "user_id", "collection": "users", "encoding": "none"} in more["data"][0][
        "external_ids"]
    _, meta, _ = call(tables, f"{accounts}/group_id:acme/metadata")
    assert meta["metadata"]["group_id"] == "acme"
    status, _, _ = call(tables, f"{accounts}/group_id:acme/events")
    assert status == 404
    status, body, _ = call(tables, f"{accounts}/user_id:ana/traits")
    assert status == 400 and "group_id" in body["error"]["message"]
    status, _, _ = call(tables, f"{accounts}/group_id:nope/traits")
    assert status == 404


def test_traits_list_computed_traits_and_audiences_and_filter_them_by_class(tables: MemoryProfileTables) -> None:
    from datetime import UTC, datetime

    from cdp.segmentation.catalog import ActiveSpec, Catalog
    from cdp.segmentation.definitions import AggregateSpec, ComputedTraitDefinition
    from cdp.segmentation.tallies import StreamPosition, Tallies, fold_events, tallies_to_json

    spent = AggregateSpec(kind="sum", event="Order Completed", property="total")
    catalog = Catalog(computed_traits={"ltv": ComputedTraitDefinition(id="ltv", name="LTV", aggregate=spent)},
                      specs={spent.aggregate_id(): ActiveSpec(spent, "g1", "2026-01-01T00:00:00Z")})
    order = segment_event("track", "m4", "2026-03-04T10:00:00.000Z", userId="ana", event="Order Completed",
                          properties={"total": 30})
    tables.identity["prof#p-ana"]["agg"] = tallies_to_json(
        fold_events(Tallies(), catalog.specs, [(StreamPosition("k", 1), order)], datetime(2026, 3, 5, tzinfo=UTC)))
    api = ProfileApi(ProfileReader(tables), tokens, "default", IdentityConfig(), catalog=lambda: catalog,
                     audiences=lambda pid: {"big-spenders": True} if pid == "p-ana" else {})

    def traits(**query: str) -> dict[str, Any]:
        response = api.handle(ApiRequest(f"{BASE}/user_id:ana/traits", {"limit": "200", **query}, basic(TOKEN)))
        assert response.status == 200, response.body
        return response.body["traits"]

    assert traits() == {"city": "Lisbon", "name": "Ana", "plan": "pro", "ltv": 30, "big-spenders": True}
    assert traits(**{"class": "computed_trait"}) == {"ltv": 30}
    assert traits(**{"class": "audience"}) == {"big-spenders": True}
    assert traits(**{"class": "custom_trait"}) == {"city": "Lisbon", "name": "Ana", "plan": "pro"}
    assert traits(**{"class": "audience"}, verbose="true") == {"big-spenders": {"value": True, "class": "audience"}}
    assert api.handle(ApiRequest(f"{BASE}/user_id:ana/traits", {"class": "sql"}, basic(TOKEN))).status == 400
