"""The admin API on moto: admin tokens only, validated settings, and consumers that follow them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.access_tokens import AccessTokenRegistry
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.identity.config import IdentityConfig
from cdp.local.lambda_events import http_api_event
from tests.conftest import load_handler

admin_api = load_handler("admin_api")
PATH = "/v1/admin/identity-config"


@pytest.fixture
def tokens(aws: None) -> dict[str, str]:
    registry = AccessTokenRegistry(boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name))
    return {"admin": registry.create_token("ops", "default", scope="admin")[1],
            "read": registry.create_token("reader", "default")[1],
            "other": registry.create_token("elsewhere", "other", scope="admin")[1]}


def call(method: str, token: str | None, ctx: Any, body: Any = None, path: str = PATH,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    sent = [("Host", "api.example.com"), ("Content-Type", "application/json"), *(headers or {}).items()]
    if token is not None:
        sent.append(("Authorization", "Basic " + base64.b64encode(f"{token}:".encode()).decode()))
    text = None if body is None else body if isinstance(body, str) else json.dumps(body)
    event = http_api_event(method=method, path=path, headers=sent, route_key=resources.ADMIN_API_ROUTE.route_key,
                           body=None if text is None else text.encode(),
                           path_parameters={"proxy": path.removeprefix("/v1/admin/")})
    response = admin_api.handler(event, ctx)
    return response["statusCode"], json.loads(response["body"])


def test_only_an_admin_token_of_this_space_may_read_or_change_the_settings(tokens, lambda_context):
    assert call("GET", None, lambda_context)[0] == 401
    assert call("GET", "cdpat_unknown", lambda_context)[0] == 401
    status, body = call("PUT", tokens["read"], lambda_context, {"default_phone_region": "PT"})
    assert status == 403 and "admin" in body["error"]["message"]
    assert call("GET", tokens["other"], lambda_context)[0] == 403
    status, body = call("GET", tokens["admin"], lambda_context)
    assert status == 200 and body["origin"] == "deployment"
    assert body["config"] == IdentityConfig().model_dump(mode="json")


def test_settings_are_validated_stored_and_reset(tokens, lambda_context):
    status, body = call("PUT", tokens["admin"], lambda_context,
                        {"types": [{"name": "user_id", "priority": 1, "limit": 0}]})
    assert status == 400 and body["error"]["problems"][0]["field"].startswith("types.0.limit")
    assert call("PUT", tokens["admin"], lambda_context, "not json")[0] == 400
    assert call("PUT", tokens["admin"], lambda_context, [1, 2])[0] == 400

    wanted = {"types": [{"name": "user_id", "priority": 1, "limit": 1},
                        {"name": "email", "priority": 2, "limit": 1}], "default_phone_region": "PT"}
    status, body = call("PUT", tokens["admin"], lambda_context, wanted)
    assert status == 200 and body["origin"] == "admin"
    # What a consumer reads (after its one-minute cache) is what was set.
    store = IdentityConfigStore(boto3.client("dynamodb"), resources.IDENTITY_TABLE.local_name, IdentityConfig())
    current = store.current()
    assert current.type_of("email").limit == 1 and current.default_phone_region == "PT"

    status, body = call("DELETE", tokens["admin"], lambda_context)
    assert status == 200 and body["origin"] == "deployment"
    assert call("POST", tokens["admin"], lambda_context)[0] == 405
    assert call("GET", tokens["admin"], lambda_context, path="/v1/admin/other")[0] == 404


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audiences"


def test_audience_definitions_are_created_validated_listed_updated_and_deleted(tokens, lambda_context):
    pricing = json.loads((EXAMPLES / "pricing-page-interest.json").read_text())
    path = "/v1/admin/audiences"
    status, body = call("POST", tokens["admin"], lambda_context, pricing, path=path)
    assert status == 201, body
    assert body["id"] == pricing["id"] and body["version"] == 1 and body["summary"]
    assert call("POST", tokens["admin"], lambda_context, pricing, path=path)[0] == 409

    broken = json.loads(json.dumps(pricing))
    broken["id"] = "broken-one"
    broken["condition"] = {"type": "and", "conditions": [{"type": "trait", "trait": "plan", "op": "gt",
                                                          "value": "pro"}, {"type": "nope"}]}
    status, body = call("POST", tokens["admin"], lambda_context, broken, path=path)
    assert status == 400 and body["error"]["problems"], body
    assert all(p["field"].startswith("condition") for p in body["error"]["problems"])

    status, listing = call("GET", tokens["admin"], lambda_context, path=path)
    assert [d["id"] for d in listing["data"]] == [pricing["id"]]
    changed = {**pricing, "name": "Pricing page, keen"}
    one = f"{path}/{pricing['id']}"
    status, body = call("PUT", tokens["admin"], lambda_context, changed, path=one)
    assert status == 200 and body["version"] == 2 and body["definition"]["name"] == "Pricing page, keen"
    assert call("PUT", tokens["read"], lambda_context, changed, path=one)[0] == 403
    stale = call("PUT", tokens["admin"], lambda_context, pricing, path=one, headers={"If-Match": "1"})
    assert stale[0] == 409  # someone else saved version 2 since version 1 was read
    assert call("DELETE", tokens["admin"], lambda_context, path=one) == (200, {"deleted": pricing["id"]})
    assert call("GET", tokens["admin"], lambda_context, path=one)[0] == 404


def test_computed_trait_definitions_use_their_own_collection(tokens, lambda_context):
    ltv = json.loads((EXAMPLES / "computed_traits" / "lifetime_value.json").read_text())
    status, body = call("POST", tokens["admin"], lambda_context, ltv, path="/v1/admin/computed-traits")
    assert status == 201 and body["kind"] == "computed_trait", body
    assert call("GET", tokens["admin"], lambda_context, path=f"/v1/admin/audiences/{ltv['id']}")[0] == 404


def spec_items() -> dict[str, dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=resources.SEGMENTS_TABLE.local_name)["Items"]
    return {i["pk"]["S"]: i for i in items if i["pk"]["S"].startswith("spec#")}


def test_saving_definitions_registers_the_aggregates_they_read_and_deleting_drops_them(tokens, lambda_context):
    pricing = json.loads((EXAMPLES / "pricing-page-interest.json").read_text())
    ltv = json.loads((EXAMPLES / "computed_traits" / "lifetime_value.json").read_text())
    status, body = call("POST", tokens["admin"], lambda_context, pricing, path="/v1/admin/audiences")
    assert status == 201 and body["status"] == "backfilling" and body["live_from"], body
    call("POST", tokens["admin"], lambda_context, ltv, path="/v1/admin/computed-traits")
    registered = spec_items()
    assert len(registered) == 2
    pricing_spec = next(k for k, i in registered.items() if '"Pricing"' in i["spec"]["S"])
    assert registered[pricing_spec]["live_from"]["S"] > registered[pricing_spec]["created_at"]["S"]

    # Editing the name keeps the spec (and its states); deleting the audience drops it.
    renamed = {**pricing, "name": "Keen on pricing"}
    call("PUT", tokens["admin"], lambda_context, renamed, path=f"/v1/admin/audiences/{pricing['id']}")
    assert spec_items()[pricing_spec]["gen"] == registered[pricing_spec]["gen"]
    call("DELETE", tokens["admin"], lambda_context, path=f"/v1/admin/audiences/{pricing['id']}")
    assert set(spec_items()) == set(registered) - {pricing_spec}
    status, body = call("GET", tokens["admin"], lambda_context, path=f"/v1/admin/computed-traits/{ltv['id']}")
    assert body["status"] == "backfilling"


def test_an_audiences_members_page_through_and_a_profile_lists_its_memberships(tokens, lambda_context):
    from cdp.aws.membership_store import MembershipStore
    from cdp.segmentation.membership import Decision

    pricing = json.loads((EXAMPLES / "pricing-page-interest.json").read_text())
    call("POST", tokens["admin"], lambda_context, pricing, path="/v1/admin/audiences")
    store = MembershipStore(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    for n in range(5):
        store.apply(f"p{n}", [Decision(pricing["id"], True, "entered", 1, "2026-11-28T10:00:00.000Z")], {})
    store.apply("p0", [Decision(pricing["id"], False, "exited", 2, "2026-11-28T11:00:00.000Z")],
                store.of_profile("p0"))

    members_path = f"/v1/admin/audiences/{pricing['id']}/members"
    seen: list[str] = []
    cursor = None
    while True:
        event_path = members_path
        status, page = call_with_query("GET", tokens["admin"], lambda_context, event_path,
                                       {"limit": "2", **({"cursor": cursor} if cursor else {})})
        assert status == 200, page
        seen += [m["profile_id"] for m in page["data"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert sorted(seen) == ["p1", "p2", "p3", "p4"]
    assert call_with_query("GET", tokens["admin"], lambda_context, members_path, {"cursor": "bad"})[0] == 400
    assert call_with_query("GET", tokens["admin"], lambda_context, members_path, {"limit": "0"})[0] == 400
    assert call("GET", tokens["admin"], lambda_context, path="/v1/admin/audiences/nope/members")[0] == 404
    assert call("GET", tokens["read"], lambda_context, path=members_path)[0] == 403

    status, body = call("GET", tokens["admin"], lambda_context, path="/v1/admin/profiles/p0/audiences")
    assert status == 200 and body["data"] == [{"audience_id": pricing["id"], "member": False,
                                               "entered_at": "2026-11-28T10:00:00.000Z",
                                               "exited_at": "2026-11-28T11:00:00.000Z"}]


def call_with_query(method: str, token: str, ctx: Any, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    from urllib.parse import urlencode

    sent = [("Host", "api.example.com"),
            ("Authorization", "Basic " + base64.b64encode(f"{token}:".encode()).decode())]
    event = http_api_event(method=method, path=path, headers=sent, route_key=resources.ADMIN_API_ROUTE.route_key,
                           raw_query=urlencode(query), path_parameters={"proxy": path.removeprefix("/v1/admin/")})
    response = admin_api.handler(event, ctx)
    return response["statusCode"], json.loads(response["body"])


def test_backfills_lists_each_run_with_its_specs_status_and_progress(tokens, lambda_context):
    from datetime import UTC, datetime, timedelta

    from cdp.aws.backfill_store import DynamoBackfill

    assert call("GET", tokens["admin"], lambda_context, path="/v1/admin/backfills") == (200, {"data": []})
    ltv = json.loads((EXAMPLES / "computed_traits" / "lifetime_value.json").read_text())
    assert call("POST", tokens["admin"], lambda_context, ltv, path="/v1/admin/computed-traits")[0] == 201
    status, body = call("GET", tokens["admin"], lambda_context, path=f"/v1/admin/computed-traits/{ltv['id']}")
    assert body["status"] == "backfilling"

    later = datetime.now(UTC) + timedelta(hours=1)  # past live_from and the settle time
    backfill = DynamoBackfill(lambda: boto3.client("dynamodb"), resources.IDENTITY_TABLE.local_name,
                              resources.EVENTS_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                              segments=2, workers=2, now=lambda: later)
    assert backfill.run(deadline=float("inf")).state == "done"

    status, body = call("GET", tokens["admin"], lambda_context, path="/v1/admin/backfills")
    assert status == 200
    (run,) = body["data"]
    assert run["status"] == "done" and run["progress"] == 1.0
    assert run["segments_total"] == run["segments_done"] == 2
    assert set(run) >= {"run_id", "specs", "scanned", "profiles", "written", "estimate", "started_at",
                        "updated_at", "finished_at"}
    assert len(run["specs"]) >= 1  # spec id -> generation
    status, body = call("GET", tokens["admin"], lambda_context, path=f"/v1/admin/computed-traits/{ltv['id']}")
    assert body["status"] == "ready"


def test_backfills_is_read_only_and_for_admin_tokens(tokens, lambda_context):
    assert call("GET", tokens["read"], lambda_context, path="/v1/admin/backfills")[0] == 403
    assert call("POST", tokens["admin"], lambda_context, {}, path="/v1/admin/backfills")[0] == 405


def test_a_draft_audience_is_previewed_with_an_estimate_and_sample_without_saving(tokens, lambda_context):
    from cdp.aws.event_store import HistoryEntry, HistoryStore
    from cdp.aws.identity_graph import DynamoIdentityGraph
    from cdp.aws.profile_store import ProfileRecords
    from cdp.identity.config import IdentityConfig
    from cdp.unification import UnificationStage

    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, IdentityConfig(),
                                records_table=resources.EVENTS_TABLE.local_name)
    stage = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), IdentityConfig())
    history = HistoryStore(ddb, resources.EVENTS_TABLE.local_name, 90)
    now = datetime.now(UTC)
    for n in range(12):
        views = 3 if n % 3 == 0 else 1  # 4 of 12 people viewed pricing 3 times this week
        events = [{"type": "page", "name": "Pricing", "messageId": f"p{n}-{v}", "userId": f"u{n}",
                   "timestamp": (now - timedelta(days=v)).isoformat().replace("+00:00", "Z"),
                   "receivedAt": (now - timedelta(days=v)).isoformat().replace("+00:00", "Z")}
                  for v in range(views)]
        history.claim([HistoryEntry("src", e, f"shard:{n}{e['messageId']}") for e in events])
        stage.store([("src", e) for e in events])
    draft = {"condition": {"type": "event", "event_type": "page", "event": "Pricing",
                           "count": {"op": "at_least", "n": 3}, "window": {"days": 7}}}
    status, body = call("POST", tokens["admin"], lambda_context, draft, path="/v1/admin/audiences/preview")
    assert status == 200, body
    assert body["sampled_profiles"] == 12 and body["matching_in_sample"] == 4
    assert body["estimated_size"] == 4 and len(body["sample"]) == 4
    assert body["summary"].startswith("viewed page")
    assert call("GET", tokens["admin"], lambda_context, path="/v1/admin/audiences")[1]["data"] == []
    bad = call("POST", tokens["admin"], lambda_context, {"condition": {"type": "nope"}},
               path="/v1/admin/audiences/preview")
    assert bad[0] == 400 and bad[1]["error"]["problems"]


def test_an_audience_reading_only_account_activity_waits_for_its_activity_backfill(tokens, lambda_context):
    from cdp.aws.backfill_store import DynamoBackfill

    accounts_only = {"id": "busy-accounts", "name": "Busy accounts",
                     "condition": {"type": "account_activity", "event": "Feature Used", "window": {"days": 7},
                                   "members": {"op": "at_least", "n": 3}}}
    status, body = call("POST", tokens["admin"], lambda_context, accounts_only, path="/v1/admin/audiences")
    items = boto3.client("dynamodb").scan(TableName=resources.SEGMENTS_TABLE.local_name)["Items"]
    [activity_spec] = [i for i in items if i["pk"]["S"].startswith("actspec#")]
    assert activity_spec["backfill"]["S"] == "pending"
    # Not ready before its activity spec is live and backfilled; the demo waits on this live_from.
    assert status == 201 and body["status"] == "backfilling", body
    assert body["live_from"] == activity_spec["live_from"]["S"]

    later = datetime.now(UTC) + timedelta(hours=1)  # past live_from and the settle time
    backfill = DynamoBackfill(lambda: boto3.client("dynamodb"), resources.IDENTITY_TABLE.local_name,
                              resources.EVENTS_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                              segments=2, workers=2, now=lambda: later)
    assert backfill.run(deadline=float("inf")).state == "done"
    status, body = call("GET", tokens["admin"], lambda_context, path="/v1/admin/audiences/busy-accounts")
    assert body["status"] == "evaluating"  # backfilled; the audience pass has not run yet


def test_a_mixed_audience_is_live_once_its_latest_spec_is(tokens, lambda_context):
    high_intent = json.loads((EXAMPLES / "high-intent-accounts.json").read_text())
    status, body = call("POST", tokens["admin"], lambda_context, high_intent, path="/v1/admin/audiences")
    items = boto3.client("dynamodb").scan(TableName=resources.SEGMENTS_TABLE.local_name)["Items"]
    live_froms = [i["live_from"]["S"] for i in items if i["pk"]["S"].startswith(("spec#", "actspec#"))]
    assert status == 201 and body["status"] == "backfilling" and len(live_froms) == 2
    assert body["live_from"] == max(live_froms)
