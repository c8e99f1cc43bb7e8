"""The backfill's pure part: which partitions a profile has, the cut at live_from, and adding
earlier events once per partition."""

from __future__ import annotations

from datetime import UTC, datetime

from cdp.segmentation import aggregates
from cdp.segmentation.backfill import (
    add_history,
    fold_history,
    history_partitions,
    partition_of,
    partition_tag,
    unfilled,
)
from cdp.segmentation.catalog import ActiveSpec
from cdp.segmentation.definitions import AggregateSpec
from cdp.segmentation.tallies import Tallies

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
SPENT = AggregateSpec(kind="sum", event="Order Completed", property="total")
SPECS = {"ltv": ActiveSpec(SPENT, "g1", "2026-11-28T10:00:00.000Z")}


def order(total: float, received: str) -> dict:
    return {"type": "track", "event": "Order Completed", "properties": {"total": total},
            "timestamp": received, "receivedAt": received, "messageId": received}


def test_history_partitions_are_the_user_and_anonymous_ids_only():
    keys = ["ident#user_id:u1", "ident#anonymous_id:a1", "ident#email:x@example.com", "ident#anonymous_id:a1"]
    assert history_partitions(keys) == ["a#a1", "u#u1"]
    assert partition_of("prof#123") is None


def test_the_cut_is_the_complement_of_the_consumers_across_instant_spellings():
    events = [order(1, "2026-11-28T09:59:59.999Z"), order(10, "2026-11-28T10:00:00+00:00"),
              order(100, "2026-11-28T10:00:00.000001Z")]
    (state,) = fold_history(SPECS, events, NOW).values()
    assert aggregates.value(state, NOW) == 1


def test_history_is_added_once_per_partition_and_kept_with_the_live_part():
    live = {"k": "sum", "g": "g1", "b": {"*": [1, 50]}}
    tallies = Tallies({"ltv": live})
    fills = {"a#a1": fold_history(SPECS, [order(5, "2026-11-27T09:00:00Z")], NOW)}
    once = add_history(tallies, SPECS, fills, NOW)
    assert once.states["ltv"]["b"] == {"*": [2, 55]} and once.states["ltv"]["f"] == [partition_tag("a#a1")]
    assert add_history(once, SPECS, fills, NOW) is once
    assert unfilled(once, SPECS, ["a#a1", "u#u1"]) == ["u#u1"]


def test_a_partition_without_earlier_events_changes_nothing():
    tallies = Tallies()
    assert add_history(tallies, SPECS, {"a#a1": {}}, NOW) is tallies


def test_a_state_of_a_newer_generation_is_left_alone_and_an_older_one_replaced():
    fills = {"a#a1": fold_history(SPECS, [order(5, "2026-11-27T09:00:00Z")], NOW)}
    newer = Tallies({"ltv": {"k": "sum", "g": "g2", "b": {"*": [1, 1]}}})
    assert add_history(newer, SPECS, fills, NOW) is newer
    older = Tallies({"ltv": {"k": "sum", "g": "g0", "b": {"*": [1, 1]}}})
    assert add_history(older, SPECS, fills, NOW).states["ltv"]["b"] == {"*": [1, 5]}


def test_a_run_is_named_by_its_aggregate_and_activity_specs_and_their_generations():
    from cdp.aws.backfill_store import run_id_of, spec_gens
    from cdp.segmentation.catalog import ActiveActivitySpec
    from cdp.segmentation.definitions import AccountActivitySpec

    activity = {"act_1": ActiveActivitySpec(AccountActivitySpec(event="Feature Used", window={"days": 7}), "g1",
                                            "2026-11-28T10:00:00.000Z")}
    assert run_id_of(SPECS) == run_id_of(SPECS, {})  # runs of aggregate specs only keep their ids
    assert spec_gens(SPECS, activity) == {"ltv": "g1", "actspec#act_1": "g1"}  # as the checkpoint lists them
    regenerated = {"act_1": ActiveActivitySpec(activity["act_1"].spec, "g2", "2026-11-28T11:00:00.000Z")}
    names = {run_id_of(SPECS), run_id_of(SPECS, activity), run_id_of({}, activity), run_id_of(SPECS, regenerated)}
    assert len(names) == 4
