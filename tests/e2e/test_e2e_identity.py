"""The issue's identity scenarios and bad identifiers, end to end through the local stack.

Events go in over HTTP (the real segment-analytics-python client where it fits, raw
HTTP and `cdp import` for the rest), through the collector, the stream and the
consumer's unification stage; every outcome is read back through the Profile API over
HTTP, as a customer would read it. Each test uses its own ids (a uuid per test), so
the tests share the session's stack without seeing each other; messageIds and
timestamps are fixed, so what the consumer decides does not depend on the clock.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import segment.analytics as segment_analytics
from e2e_pipeline import Pipeline

from cdp import resources
from cdp.aws.event_store import event_of_item, person_key

pytestmark = pytest.mark.e2e
CDP = Path(sys.executable).parent / "cdp"
CYRILLIC_A = "\u0430"  # looks like Latin "a"
FULLWIDTH_A = "\uff41"  # NFKC folds it to Latin "a"


# --- sending ---------------------------------------------------------------------------------------


def at(day: int, hour: int = 10, minute: int = 0, month: int = 3) -> datetime:
    """A fixed client time in 2026 (the SDK sends it as the event's timestamp)."""
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def iso(day: int, hour: int = 10, minute: int = 0, month: int = 3) -> str:
    return f"2026-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00.000Z"


class Sdk:
    """segment-analytics-python in sync mode: every call is one POST, refused calls fail the test."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.errors: list[Any] = []
        self.client = segment_analytics.Client(pipeline.write_key, host=pipeline.api_url, sync_mode=True,
                                               max_retries=2, on_error=lambda error, batch: self.errors.append(error))

    def __getattr__(self, call: str) -> Callable[..., dict[str, Any]]:
        method = getattr(self.client, call)

        def send(*args: Any, **kwargs: Any) -> dict[str, Any]:
            success, message = method(*args, **kwargs)
            assert success and self.errors == [], self.errors
            return dict(message)

        return send


def post(pipeline: Pipeline, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """A raw POST to the collector with the write key; returns status and JSON body.

    No ``sentAt`` is sent unless the body has one, so the stored timestamp is exactly the
    event's own."""
    request = urllib.request.Request(
        pipeline.api_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"{pipeline.write_key}:".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def accepted(pipeline: Pipeline, *events: dict[str, Any]) -> None:
    """POST events as one /v1/batch and require every one of them accepted."""
    status, body = post(pipeline, "/v1/batch", {"batch": list(events)})
    assert status == 200 and body.get("accepted") == len(events) and "rejected" not in body, body


def cdp_import(pipeline: Pipeline, export: Path) -> dict[str, Any]:
    """`cdp import` of a CRM export, in its own process, through the API; returns its summary line."""
    stack = pipeline.stack
    result = subprocess.run(
        [str(CDP), "--aws-url", stack.aws_endpoint_url, "--api-url", stack.api_url,
         "import", str(export), "--write-key", pipeline.write_key],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def history(pipeline: Pipeline, **person: str) -> list[dict[str, Any]]:
    """The events table's history of one person (``userId=`` or ``anonymousId=``), read directly."""
    items = pipeline.stack.session().client("dynamodb").query(
        TableName=resources.EVENTS_TABLE.local_name, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": person_key(person)}})["Items"]
    return [event_of_item(item) for item in items]


# --- reading: the Profile API over HTTP ------------------------------------------------------------


class ProfileApi:
    """GETs on the Profile API with the local access token as the HTTP Basic username."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.base = f"{pipeline.api_url}/v1/spaces/{pipeline.stack.space}/collections"
        self.auth = "Basic " + base64.b64encode(f"{pipeline.stack.access_token}:".encode()).decode()

    def get(self, collection: str, identifier: str, resource: str, **query: Any) -> tuple[int, dict[str, Any]]:
        url = f"{self.base}/{collection}/profiles/{quote(identifier, safe=':@')}/{resource}"
        if query:
            url += "?" + urlencode(query)
        request = urllib.request.Request(url, headers={"Authorization": self.auth})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def user(self, identifier: str, resource: str, **query: Any) -> dict[str, Any]:
        """A user's resource, which must exist (200)."""
        status, body = self.get("users", identifier, resource, **query)
        assert status == 200, (identifier, resource, status, body)
        return body

    def account(self, group_id: str, resource: str, **query: Any) -> dict[str, Any]:
        status, body = self.get("accounts", f"group_id:{group_id}", resource, **query)
        assert status == 200, (group_id, resource, status, body)
        return body

    def profile_id(self, identifier: str) -> str:
        return str(self.user(identifier, "metadata")["metadata"]["profile_id"])

    def traits(self, identifier: str) -> dict[str, Any]:
        return dict(self.user(identifier, "traits", limit=200)["traits"])

    def external_ids(self, identifier: str) -> set[tuple[str, str]]:
        return {(d["type"], d["id"]) for d in self.user(identifier, "external_ids", limit=100)["data"]}

    def events(self, identifier: str) -> list[dict[str, Any]]:
        return list(self.user(identifier, "events", limit=100)["data"])

    def status(self, identifier: str, resource: str = "metadata") -> int:
        return self.get("users", identifier, resource)[0]


@pytest.fixture
def api(pipeline: Pipeline) -> ProfileApi:
    return ProfileApi(pipeline)


@pytest.fixture
def run() -> str:
    """Unique per test, so tests never share an identifier on the shared stack."""
    return uuid.uuid4().hex[:10]


# --- the scenarios -------------------------------------------------------------------------


def test_laptop_signup_mobile_and_crm_import_are_one_profile_with_the_latest_traits(
        pipeline: Pipeline, api: ProfileApi, run: str, tmp_path: Path) -> None:
    user, laptop, phone, device = f"ana-{run}", f"laptop-{run}", f"phone-{run}", f"dev-{run}"
    email = f"ana.{run}@example.com"
    crm_row, crm_stale = f"crm-{run}", f"crm-old-{run}"
    sdk = Sdk(pipeline)
    # Anonymous browsing on the laptop, then the sign-up there.
    sdk.page(anonymous_id=laptop, name="Home", timestamp=at(1), message_id=f"{run}-home")
    sdk.track(anonymous_id=laptop, event="Viewed Pricing", timestamp=at(1, minute=5), message_id=f"{run}-pricing")
    sdk.identify(user, {"email": f"Ana.{run}@Example.com", "name": "Ana", "plan": "free"}, anonymous_id=laptop,
                 timestamp=at(2), message_id=f"{run}-signup")
    # The mobile app: same user, its own anonymous id and a device id.
    sdk.screen(user, name="Feed", anonymous_id=phone, context={"device": {"id": device, "type": "ios"}},
               timestamp=at(3), message_id=f"{run}-feed")
    # The CRM export knows the email only: a later row with a new plan, and an older row with stale values.
    export = tmp_path / "crm.csv"
    export.write_text("anonymousId,email,plan,name,timestamp\n"
                      f"{crm_row},{email},pro,,{iso(4, 9)}\n"
                      f"{crm_stale},{email},trial,Ana Old,{iso(20, 9, month=2)}\n")
    assert cdp_import(pipeline, export)["accepted"] == 2
    pipeline.drain()

    everyone = [f"user_id:{user}", f"email:{email}", f"anonymous_id:{laptop}", f"anonymous_id:{phone}",
                f"device_id:{device}", f"anonymous_id:{crm_row}", f"anonymous_id:{crm_stale}"]
    assert len({api.profile_id(identifier) for identifier in everyone}) == 1
    assert api.external_ids(f"email:{email}") == {
        ("user_id", user), ("email", email), ("device_id", device), ("anonymous_id", laptop),
        ("anonymous_id", phone), ("anonymous_id", crm_row), ("anonymous_id", crm_stale)}
    # Latest event timestamp wins per trait: the CRM's newer plan and email spelling, the sign-up's name
    # over the older CRM row's.
    assert api.traits(f"user_id:{user}") == {"email": email, "name": "Ana", "plan": "pro"}
    plan = api.user(f"device_id:{device}", "traits", verbose="true", include="plan")["traits"]["plan"]
    assert plan["value"] == "pro" and plan["updated_at"].startswith("2026-03-04T09:00:00")
    # The history of every device, newest first.
    assert [(e["type"], e.get("anonymous_id")) for e in api.events(f"anonymous_id:{laptop}")] == [
        ("identify", crm_row), ("screen", phone), ("identify", laptop), ("track", laptop), ("page", laptop),
        ("identify", crm_stale)]


def test_two_people_on_one_device_stay_two_profiles_and_the_blocked_merge_is_shown(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    shared_pc, first, second = f"family-pc-{run}", f"mum-{run}", f"son-{run}"
    sdk = Sdk(pipeline)
    sdk.identify(first, {"name": "Mum"}, anonymous_id=shared_pc, timestamp=at(1), message_id=f"{run}-mum")
    pipeline.drain()
    sdk.identify(second, {"name": "Son"}, anonymous_id=shared_pc, timestamp=at(2), message_id=f"{run}-son")
    pipeline.drain()

    mum, son = api.profile_id(f"user_id:{first}"), api.profile_id(f"user_id:{second}")
    assert mum != son
    assert api.profile_id(f"anonymous_id:{shared_pc}") == mum  # the device stays with the first person
    assert api.traits(f"user_id:{first}") == {"name": "Mum"}
    assert api.traits(f"user_id:{second}") == {"name": "Son"}
    assert api.external_ids(f"user_id:{first}") == {("user_id", first), ("anonymous_id", shared_pc)}
    assert api.external_ids(f"user_id:{second}") == {("user_id", second)}

    son_meta = api.user(f"user_id:{second}", "metadata", verbose="true")["metadata"]
    assert son_meta["merges"] == [] and son_meta["merged_from"] == []
    assert son_meta["blocked_merges"] == [{"message_id": f"{run}-son", "at": son_meta["blocked_merges"][0]["at"],
                                           "dropped_types": ["anonymous_id"]}]
    assert son_meta["blocked_merges"][0]["at"].startswith("2026-03-02T10:00")
    mum_meta = api.user(f"user_id:{first}", "metadata", verbose="true")["metadata"]
    assert mum_meta["blocked_merges"] == [] and mum_meta["merges"] == []


def test_alias_joins_the_earlier_anonymous_events_to_the_new_user(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    visitor, user = f"visitor-{run}", f"user-{run}"
    sdk = Sdk(pipeline)
    sdk.track(anonymous_id=visitor, event="Viewed Pricing", timestamp=at(1), message_id=f"{run}-viewed")
    sdk.page(anonymous_id=visitor, name="Checkout", timestamp=at(1, 11), message_id=f"{run}-checkout")
    pipeline.drain()
    sdk.alias(visitor, user, timestamp=at(2), message_id=f"{run}-alias")
    pipeline.drain()

    assert api.profile_id(f"user_id:{user}") == api.profile_id(f"anonymous_id:{visitor}")
    assert api.external_ids(f"user_id:{user}") == {("user_id", user), ("anonymous_id", visitor)}
    assert [e["message_id"] for e in api.events(f"user_id:{user}")] == [
        f"{run}-alias", f"{run}-checkout", f"{run}-viewed"]


def test_group_makes_an_account_with_its_traits_and_links_both_ways(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    account, bo, cy = f"acme-{run}", f"bo-{run}", f"cy-{run}"
    sdk = Sdk(pipeline)
    sdk.identify(bo, {"name": "Bo"}, timestamp=at(1), message_id=f"{run}-bo")
    sdk.group(bo, account, {"name": "Acme", "plan": "trial"}, timestamp=at(1, 11), message_id=f"{run}-group-bo")
    sdk.group(cy, account, {"plan": "enterprise", "employees": 42}, timestamp=at(2), message_id=f"{run}-group-cy")
    pipeline.drain()

    assert api.account(account, "traits")["traits"] == {"employees": 42, "name": "Acme", "plan": "enterprise"}
    members = api.account(account, "links")["data"]
    assert {member["profile_id"] for member in members} == {api.profile_id(f"user_id:{bo}"),
                                                            api.profile_id(f"user_id:{cy}")}
    assert {(i["type"], i["id"]) for member in members for i in member["external_ids"]} == {
        ("user_id", bo), ("user_id", cy)}
    assert all(member["to_collection"] == "users" for member in members)
    for user in (bo, cy):
        assert api.user(f"user_id:{user}", "links")["data"] == [{
            "to_collection": "accounts",
            "external_ids": [{"id": account, "type": "group_id", "collection": "accounts", "encoding": "none"}]}]
    assert api.traits(f"user_id:{bo}") == {"name": "Bo"}  # group traits are the account's, not the user's
    assert api.account(account, "metadata")["metadata"]["group_id"] == account


def test_one_identify_merges_three_profiles_and_their_old_ids_still_resolve(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    browser, crm, app, user = f"web-{run}", f"crm-{run}", f"app-{run}", f"tri-{run}"
    email = f"tri.{run}@example.com"
    accepted(pipeline,
             {"type": "page", "anonymousId": browser, "name": "Home", "messageId": f"{run}-1",
              "timestamp": iso(1)},
             {"type": "identify", "anonymousId": crm, "traits": {"email": email, "tier": "gold"},
              "messageId": f"{run}-2", "timestamp": iso(2)},
             {"type": "identify", "anonymousId": app, "traits": {"phone": "+33612345678", "city": "Nice"},
              "messageId": f"{run}-3", "timestamp": iso(3)})
    pipeline.drain()
    before = {api.profile_id(f"anonymous_id:{browser}"), api.profile_id(f"email:{email}"),
              api.profile_id("phone:+33612345678")}
    assert len(before) == 3

    accepted(pipeline, {"type": "identify", "anonymousId": browser, "userId": user, "messageId": f"{run}-4",
                        "timestamp": iso(4), "traits": {"email": email, "phone": "+33 6 12 34 56 78"}})
    pipeline.drain()

    survivor = api.profile_id(f"user_id:{user}")
    for identifier in (f"anonymous_id:{browser}", f"anonymous_id:{crm}", f"anonymous_id:{app}",
                       f"email:{email}", "phone:+33612345678"):
        assert api.profile_id(identifier) == survivor, identifier
    merged = before - {survivor}
    assert survivor in before and len(merged) == 2
    metadata = api.user(f"profile_id:{survivor}", "metadata", verbose="true")["metadata"]
    assert set(metadata["merged_from"]) == merged
    assert {m["merged"] for m in metadata["merges"]} == merged
    assert all(m["survivor"] == survivor and m["message_id"] == f"{run}-4" and m["identifiers"]
               for m in metadata["merges"])
    for old in merged:
        assert api.profile_id(f"profile_id:{old}") == survivor
        assert api.traits(f"profile_id:{old}") == {"city": "Nice", "email": email, "phone": "+33 6 12 34 56 78",
                                                   "tier": "gold"}
    assert api.external_ids(f"user_id:{user}") == {
        ("user_id", user), ("email", email), ("phone", "+33612345678"), ("anonymous_id", browser),
        ("anonymous_id", crm), ("anonymous_id", app)}


def test_replaying_the_same_events_changes_nothing(pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    user, anon, account = f"replay-{run}", f"replay-anon-{run}", f"replay-acct-{run}"

    def send_everything() -> None:
        sdk = Sdk(pipeline)
        sdk.page(anonymous_id=anon, name="Home", timestamp=at(1), message_id=f"{run}-1")
        sdk.identify(user, {"email": f"{run}@example.com", "plan": "free"}, anonymous_id=anon, timestamp=at(2),
                     message_id=f"{run}-2")
        sdk.track(user, "Order Completed", {"total": 30}, timestamp=at(3), message_id=f"{run}-3")
        sdk.identify(anonymous_id=f"{anon}-2", traits={"email": f"{run}@example.com", "plan": "pro"},
                     timestamp=at(4), message_id=f"{run}-4")
        sdk.group(user, account, {"size": 5}, timestamp=at(5), message_id=f"{run}-5")

    def snapshot() -> dict[str, Any]:
        who = f"user_id:{user}"
        return {"traits": api.user(who, "traits", verbose="true"),
                "external_ids": api.user(who, "external_ids", limit=100),
                "events": api.user(who, "events", limit=100),
                "links": api.user(who, "links"),
                "metadata": api.user(who, "metadata", verbose="true"),
                "account": api.account(account, "traits", verbose="true"),
                "members": api.account(account, "links")}

    send_everything()
    pipeline.drain()
    first = snapshot()
    assert len(first["events"]["data"]) == 5
    assert first["traits"]["traits"]["plan"]["value"] == "pro"

    send_everything()  # the SDK's retry after a lost answer: same messageIds, same timestamps
    pipeline.drain()
    assert snapshot() == first


# --- bad identifiers: refused clearly or normalised as documented, never corrupting a profile -------


def test_a_user_id_of_the_wrong_type_is_refused_by_the_collector_naming_the_field(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    status, body = post(pipeline, "/v1/identify", {"userId": {"id": f"obj-{run}"}, "anonymousId": f"obj-anon-{run}",
                                                   "traits": {"email": f"obj.{run}@example.com"}})
    assert status == 400 and body["success"] is False
    assert body["error"]["field"] == "userId" and body["error"]["message"], body
    pipeline.drain()
    assert api.status(f"anonymous_id:obj-anon-{run}") == 404
    assert api.status(f"email:obj.{run}@example.com") == 404


def test_an_absurdly_long_user_id_is_refused_and_long_ids_within_the_limits_stay_apart(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    status, body = post(pipeline, "/v1/identify", {"userId": "x" * 5000 + run, "anonymousId": f"long-anon-{run}"})
    assert status == 400 and body["error"]["field"] == "userId", body  # docs/limits.md: 1,024 characters

    # Ids as long as the graph takes (512), differing only at the end; in 4-byte characters they are
    # longer than a DynamoDB key and stored hashed: still two people, each found by its own value.
    stem = "\U0001f600" * (512 - len(run) - 2) + run
    one, two = stem + "-1", stem + "-2"
    accepted(pipeline,
             {"type": "identify", "userId": one, "traits": {"name": "One"}, "messageId": f"{run}-1",
              "timestamp": iso(1)},
             {"type": "identify", "userId": two, "traits": {"name": "Two"}, "messageId": f"{run}-2",
              "timestamp": iso(1)})
    pipeline.drain()
    assert api.status(f"anonymous_id:long-anon-{run}") == 404
    assert api.profile_id(f"user_id:{one}") != api.profile_id(f"user_id:{two}")
    assert api.traits(f"user_id:{one}") == {"name": "One"} and api.traits(f"user_id:{two}") == {"name": "Two"}
    [stored] = api.user(f"user_id:{one}", "external_ids")["data"]
    assert (stored["type"], stored["encoding"]) == ("user_id", "sha256")
    assert [e["message_id"] for e in api.events(f"user_id:{two}")] == [f"{run}-2"]


def test_an_id_over_the_graph_limit_is_kept_out_of_the_graph_but_its_event_is_stored(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    too_long = "y" * 600 + run  # under the collector's 1,024, over the graph's 512 (docs/identity.md)
    accepted(pipeline, {"type": "track", "userId": too_long, "anonymousId": f"long-{run}", "event": "Long Id",
                        "messageId": f"{run}-long", "timestamp": iso(1)})
    pipeline.drain()
    assert api.status(f"user_id:{too_long}") == 404
    assert api.external_ids(f"anonymous_id:long-{run}") == {("anonymous_id", f"long-{run}")}
    # Stored, under the anonymous id's partition (the one its profile holds).
    assert [e["messageId"] for e in history(pipeline, anonymousId=f"long-{run}")] == [f"{run}-long"]


def test_an_event_whose_user_id_the_graph_refuses_is_in_the_events_of_its_anonymous_profile(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    refused_user_ids = {"over-512": "y" * 600 + run, "blocked": "null"}
    accepted(pipeline, *[
        {"type": "track", "userId": user_id, "anonymousId": f"refused-{case}-{run}", "event": "Refused Id",
         "messageId": f"{run}-{case}", "timestamp": iso(1)} for case, user_id in refused_user_ids.items()])
    pipeline.drain()
    for case in refused_user_ids:
        anonymous = f"anonymous_id:refused-{case}-{run}"
        assert api.external_ids(anonymous) == {("anonymous_id", f"refused-{case}-{run}")}
        # Stored under the anonymous id: the partition the profile holds (cdp.aws.event_store.person_key).
        assert f"{run}-{case}" in {e["messageId"] for e in history(pipeline, anonymousId=f"refused-{case}-{run}")}
    assert {case: [e["message_id"] for e in api.events(f"anonymous_id:refused-{case}-{run}")]
            for case in refused_user_ids} == {case: [f"{run}-{case}"] for case in refused_user_ids}


def test_blocked_placeholder_ids_never_join_two_people(pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    placeholders = ["null", "undefined", "0", "anonymous", "00000000-0000-0000-0000-000000000000"]
    # Each placeholder as the anonymous id, the device id and the email of two different users.
    accepted(pipeline, *[
        {"type": "identify", "userId": f"{who}-{index}-{run}", "anonymousId": placeholder,
         "messageId": f"{run}-{who}-{index}", "timestamp": iso(day), "context": {"device": {"id": placeholder}},
         "traits": {"email": placeholder, "name": who}}
        for index, placeholder in enumerate(placeholders) for day, who in ((1, "first"), (2, "second"))])
    pipeline.drain()

    for index, placeholder in enumerate(placeholders):
        first, second = f"user_id:first-{index}-{run}", f"user_id:second-{index}-{run}"
        assert api.profile_id(first) != api.profile_id(second), placeholder
        assert api.external_ids(first) == {("user_id", first.partition(":")[2])}, placeholder
        assert api.external_ids(second) == {("user_id", second.partition(":")[2])}, placeholder
        assert api.traits(first)["name"] == "first", placeholder
        assert api.user(second, "metadata", verbose="true")["metadata"]["blocked_merges"] == [], placeholder
        assert api.status(f"anonymous_id:{placeholder}") == 404, placeholder
        assert api.status(f"device_id:{placeholder}") == 404, placeholder


def test_an_email_with_a_cyrillic_lookalike_letter_never_takes_over_the_latin_address(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    latin = f"ana.{run}@example.com"
    lookalike = latin.replace("a", CYRILLIC_A, 1)
    fullwidth = latin.replace("a", FULLWIDTH_A, 1)
    assert lookalike != latin
    accepted(pipeline,
             {"type": "identify", "userId": f"victim-{run}", "traits": {"email": latin, "name": "Ana"},
              "messageId": f"{run}-victim", "timestamp": iso(1)},
             {"type": "identify", "anonymousId": f"attacker-{run}", "traits": {"email": lookalike, "name": "Eve"},
              "messageId": f"{run}-attacker", "timestamp": iso(2)})
    pipeline.drain()

    victim = api.profile_id(f"email:{latin}")
    assert api.profile_id(f"email:{lookalike}") == api.profile_id(f"anonymous_id:attacker-{run}") != victim
    assert api.external_ids(f"email:{latin}") == {("user_id", f"victim-{run}"), ("email", latin)}
    assert api.traits(f"email:{latin}") == {"email": latin, "name": "Ana"}
    assert api.external_ids(f"email:{lookalike}") == {("anonymous_id", f"attacker-{run}"), ("email", lookalike)}

    # Compatibility forms are folded (NFKC, documented): a fullwidth "a" is the Latin address.
    assert api.profile_id(f"email:{fullwidth}") == victim
    accepted(pipeline, {"type": "identify", "anonymousId": f"fullwidth-{run}", "traits": {"email": fullwidth},
                        "messageId": f"{run}-fullwidth", "timestamp": iso(3)})
    pipeline.drain()
    assert api.profile_id(f"anonymous_id:fullwidth-{run}") == victim


def test_an_alias_to_itself_is_refused_by_the_collector_and_changes_nothing(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    user = f"self-{run}"
    Sdk(pipeline).identify(user, {"name": "Self"}, anonymous_id=f"self-anon-{run}", timestamp=at(1),
                           message_id=f"{run}-1")
    status, body = post(pipeline, "/v1/alias", {"previousId": user, "userId": f" {user} ", "messageId": f"{run}-2",
                                                "timestamp": iso(2)})
    assert status == 400 and body["success"] is False, body
    assert body["error"]["field"] == "previousId" and "userId" in body["error"]["message"], body
    pipeline.drain()

    assert api.external_ids(f"user_id:{user}") == {("user_id", user), ("anonymous_id", f"self-anon-{run}")}
    assert api.traits(f"user_id:{user}") == {"name": "Self"}
    metadata = api.user(f"user_id:{user}", "metadata", verbose="true")["metadata"]
    assert (metadata["merges"], metadata["blocked_merges"], metadata["merged_from"]) == ([], [], [])
    assert [e["message_id"] for e in api.events(f"user_id:{user}")] == [f"{run}-1"]


def test_an_external_id_without_a_type_is_refused_and_one_with_an_unusable_type_stays_out_of_the_graph(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    user = f"ext-{run}"
    salesforce = {"id": f"  SF-{run} ", "type": "Salesforce_Id", "collection": "users", "encoding": "none"}
    untyped = {"type": "identify", "userId": user, "messageId": f"{run}-untyped", "timestamp": iso(1),
               "context": {"externalIds": [{"id": f"untyped-{run}", "collection": "users", "encoding": "none"},
                                           salesforce]}}
    # The collector accepts any type name; the graph takes only names (a letter, then letters, digits, _ .).
    odd_type = {"type": "track", "userId": user, "event": "Odd Type", "messageId": f"{run}-odd",
                "timestamp": iso(2), "context": {"externalIds": [{"id": f"odd-{run}", "type": "crm id"}]}}
    typed = {"type": "identify", "userId": user, "messageId": f"{run}-typed", "timestamp": iso(3),
             "context": {"externalIds": [salesforce]}}
    status, body = post(pipeline, "/v1/batch", {"batch": [untyped, odd_type, typed]})
    assert status == 200 and body["accepted"] == 2, body
    assert [(r["index"], r["field"], r["messageId"]) for r in body["rejected"]] == [
        (0, "context.externalIds.0.type", f"{run}-untyped")]
    pipeline.drain()

    assert api.external_ids(f"user_id:{user}") == {("user_id", user), ("salesforce_id", f"SF-{run}")}
    assert api.profile_id(f"Salesforce_Id:SF-{run}") == api.profile_id(f"user_id:{user}")
    assert [e["message_id"] for e in api.events(f"user_id:{user}")] == [f"{run}-typed", f"{run}-odd"]
    assert api.status(f"crm_id:odd-{run}") == 404


def test_email_case_and_whitespace_variants_are_one_identifier(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    email = f"mixed.{run}@example.com"
    accepted(pipeline,
             {"type": "identify", "userId": f"mixed-{run}", "traits": {"email": f"  Mixed.{run}@Example.COM "},
              "messageId": f"{run}-1", "timestamp": iso(1)},
             {"type": "identify", "anonymousId": f"mixed-anon-{run}", "traits": {"email": f"MIXED.{run}@EXAMPLE.COM"},
              "messageId": f"{run}-2", "timestamp": iso(2)})
    pipeline.drain()

    profile = api.profile_id(f"user_id:mixed-{run}")
    for spelling in (email, f"Mixed.{run}@Example.com", f"MIXED.{run}@EXAMPLE.COM", f" {email} "):
        assert api.profile_id(f"email:{spelling}") == profile, spelling
    assert api.profile_id(f"anonymous_id:mixed-anon-{run}") == profile
    assert api.external_ids(f"user_id:mixed-{run}") == {
        ("user_id", f"mixed-{run}"), ("email", email), ("anonymous_id", f"mixed-anon-{run}")}


def admin(pipeline: Pipeline, method: str, body: dict[str, Any] | None = None,
          token: str | None = None) -> tuple[int, dict[str, Any]]:
    """The admin API over HTTP (the local access token has scope admin)."""
    auth = "Basic " + base64.b64encode(f"{token or pipeline.stack.access_token}:".encode()).decode()
    request = urllib.request.Request(f"{pipeline.api_url}/v1/admin/identity-config", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": auth, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_identity_settings_changed_through_the_admin_api_apply_to_later_events(
        pipeline: Pipeline, api: ProfileApi, run: str) -> None:
    status, body = admin(pipeline, "PUT", {"types": [{"name": "email", "priority": 2, "limit": 0}]})
    assert status == 400 and body["error"]["problems"][0]["field"].startswith("types.0.limit"), body
    strict = {"types": [{"name": "user_id", "priority": 1, "limit": 1},
                        {"name": "email", "priority": 2, "limit": 1},
                        {"name": "anonymous_id", "priority": 6, "limit": 5}]}
    status, body = admin(pipeline, "PUT", strict)
    assert status == 200 and body["origin"] == "admin", body
    try:
        time.sleep(2.5)  # the local stack's functions re-read the settings every 2 s
        accepted(pipeline,
                 {"type": "identify", "userId": f"two-mails-{run}", "traits": {"email": f"one-{run}@example.com"},
                  "messageId": f"{run}-m1", "timestamp": iso(1)},
                 {"type": "identify", "userId": f"two-mails-{run}", "traits": {"email": f"two-{run}@example.com"},
                  "messageId": f"{run}-m2", "timestamp": iso(2)})
        pipeline.drain()
        # With one email per profile, the second address is refused for this profile.
        ids = api.external_ids(f"user_id:two-mails-{run}")
        assert ("email", f"one-{run}@example.com") in ids and ("email", f"two-{run}@example.com") not in ids
    finally:
        status, body = admin(pipeline, "DELETE")
        assert status == 200 and body["origin"] == "deployment"
        time.sleep(2.5)  # later tests on the shared stack see the default settings again
    assert admin(pipeline, "GET", token="cdpat_not-a-token")[0] == 401
