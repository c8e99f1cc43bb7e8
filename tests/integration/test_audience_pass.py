"""An audience created after the profiles: the pass touches every live profile once the specs are
backfilled, the stream brings them to the evaluator, and the audience is marked evaluated."""

from __future__ import annotations

import json
import time

import boto3

from cdp import resources
from cdp.aws.audience_pass import AudiencePass
from cdp.aws.definition_store import DefinitionStore
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.unification import UnificationStage
from tests.conftest import load_handler
from tests.integration.test_segment_evaluator import IdentityStream, memberships
from tests.segmentation_items import audience


def drain(evaluator, stream, lambda_context) -> None:
    for _ in range(5):
        event = stream.event()
        if not event["Records"]:
            return
        assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}


def test_an_audience_created_after_the_data_is_evaluated_for_every_existing_profile(aws, lambda_context):
    evaluator = load_handler("segment_evaluator")
    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, IdentityConfig(),
                                records_table=resources.EVENTS_TABLE.local_name, sleep=lambda s: None)
    stage = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), IdentityConfig())
    for n, (ids, plan) in enumerate([({"userId": "u1"}, "pro"), ({"anonymousId": "v2"}, "pro"),
                                     ({"userId": "u3"}, "free")]):
        stage.store([("src", {"type": "identify", "messageId": f"m{n}", "timestamp": "2026-11-20T10:00:00.000Z",
                              "receivedAt": "2026-11-20T10:00:00.000Z", "traits": {"plan": plan}, **ids})])
    stream = IdentityStream()
    drain(evaluator, stream, lambda_context)  # nothing defined yet: nothing happens

    pro = audience("pro", {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"})
    store = DefinitionStore(ddb, resources.SEGMENTS_TABLE.local_name)
    store.put("audience", "pro", pro.model_dump_json(), None)
    evaluator.dependencies.cache_clear()  # a fresh catalog (the cache time has passed)
    drain(evaluator, stream, lambda_context)
    assert stream.event() == {"Records": []}  # profiles do not change by themselves

    passer = AudiencePass(ddb, resources.IDENTITY_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                          page_size=1)
    assert passer.pending() == ({"pro": 1}, True)
    stopped = passer.run(deadline=time.monotonic() - 1)  # out of time at once: resumable
    assert not stopped.finished and stopped.state == "running"
    outcome = passer.run(deadline=time.monotonic() + 60)
    assert outcome.finished and outcome.state == "done" and outcome.touched == 3
    drain(evaluator, stream, lambda_context)

    u1, v2, u3 = (graph.lookup_identifier(Identifier(t, v)) for t, v in
                  [("user_id", "u1"), ("anonymous_id", "v2"), ("user_id", "u3")])
    assert memberships(str(u1)) == {"pro": True} and memberships(str(v2)) == {"pro": True}
    assert memberships(str(u3)) == {}
    assert store.get("audience", "pro").evaluated_version == 1  # type: ignore[union-attr]
    assert passer.run(deadline=time.monotonic() + 60).state == "idle"

    edited = json.loads(pro.model_dump_json())
    edited["condition"]["value"] = "free"
    store.put("audience", "pro", json.dumps(edited), 1)
    assert passer.pending() == ({"pro": 2}, True)  # an edit is evaluated again


def test_an_account_activity_audience_is_passed_only_once_its_activity_is_backfilled(aws):
    from cdp.segmentation.catalog import SpecRegistry

    ddb = boto3.client("dynamodb")
    segments = resources.SEGMENTS_TABLE.local_name
    busy = audience("busy", {"type": "account_activity", "event": "Feature Used", "window": {"days": 7},
                             "members": {"op": "at_least", "n": 3}})
    DefinitionStore(ddb, segments).put("audience", "busy", busy.model_dump_json(by_alias=True), None)
    SpecRegistry(ddb, segments, cache_seconds=0).sync([busy])
    passer = AudiencePass(ddb, resources.IDENTITY_TABLE.local_name, segments)
    assert passer.pending() == ({"busy": 1}, False)  # the members' history is not in the accounts yet
    assert passer.run(deadline=time.monotonic() + 60).state == "waiting"
    spec_key = {"pk": {"S": "actspec#" + busy.condition.activity().activity_id()}}  # type: ignore[union-attr]
    ddb.update_item(TableName=segments, Key=spec_key, UpdateExpression="SET backfill = :d",
                    ExpressionAttributeValues={":d": {"S": "done"}})
    assert passer.pending() == ({"busy": 1}, True)
