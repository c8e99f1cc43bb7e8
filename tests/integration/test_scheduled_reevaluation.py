"""Scheduled re-evaluation on moto: due memberships' profiles are touched once per ended hour."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3

from cdp import resources
from cdp.aws.identity_graph import home_profile_id
from cdp.aws.membership_store import MembershipStore
from cdp.aws.scheduled_reevaluation import MAX_CATCH_UP_HOURS, ScheduledReevaluation, hours_due
from cdp.identity.identifiers import Identifier
from cdp.segmentation.membership import Decision


def test_the_hours_due_are_those_ended_since_the_last_run():
    now = datetime(2026, 11, 29, 2, 5, tzinfo=UTC)
    assert hours_due("2026-11-28T23", now) == ["2026-11-29T00", "2026-11-29T01"]
    assert hours_due("2026-11-29T01", now) == []
    assert len(hours_due(None, now)) == MAX_CATCH_UP_HOURS


def _profile(ddb, key: str, version: int, **extra) -> None:
    ddb.put_item(TableName=resources.IDENTITY_TABLE.local_name,
                 Item={"pk": {"S": key}, "version": {"N": str(version)}, **extra})


def test_due_profiles_get_a_new_version_and_each_hour_is_done_once(aws):
    ddb = boto3.client("dynamodb")
    home = home_profile_id(Identifier("anonymous_id", "visitor-1"))
    assert home is not None
    _profile(ddb, "prof#p1", 3, status={"S": "live"})
    _profile(ddb, "ident#anonymous_id:visitor-1", 1, solo={"BOOL": True}, profile_id={"S": home})
    _profile(ddb, "prof#gone", 4, status={"S": "merged"}, merged_into={"S": "p1"})
    store = MembershipStore(ddb, resources.MEMBERSHIPS_TABLE.local_name)
    for profile_id, hour in [("p1", "2026-11-29T00"), (home, "2026-11-29T00"), ("gone", "2026-11-29T00"),
                             ("p1", "2026-11-29T05")]:
        store.apply(profile_id, [Decision(f"aud-{hour}", True, "entered", 1, "2026-11-22T10:00:00.000Z",
                                          next_check=hour)], {})
    ddb.put_item(TableName=resources.SEGMENTS_TABLE.local_name,
                 Item={"pk": {"S": "schedule#due"}, "hour": {"S": "2026-11-28T22"}})

    def versions() -> dict[str, str]:
        items = ddb.scan(TableName=resources.IDENTITY_TABLE.local_name)["Items"]
        return {i["pk"]["S"]: i["version"]["N"] for i in items}

    scheduler = ScheduledReevaluation(ddb, resources.MEMBERSHIPS_TABLE.local_name,
                                      resources.IDENTITY_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                                      now=lambda: datetime(2026, 11, 29, 1, 0, 30, tzinfo=UTC))
    run = scheduler.run()
    assert run.hours == ["2026-11-28T23", "2026-11-29T00"]
    assert (run.due, run.touched, run.gone) == (3, 2, 1)
    assert versions() == {"prof#p1": "4", "ident#anonymous_id:visitor-1": "2", "prof#gone": "4"}
    assert scheduler.run().hours == []  # the same hour again: nothing
    assert versions()["prof#p1"] == "4"
