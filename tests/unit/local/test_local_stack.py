"""EmbeddedStack wiring, with stand-in handlers: HTTP API -> collector -> Kinesis -> consumer."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from cdp import resources
from cdp.access_tokens import AccessTokenRegistry
from cdp.cli import main
from cdp.cli.local import banner
from cdp.local import EmbeddedStack
from cdp.sources import hash_write_key

COLLECTOR = '''
import base64, json, os
import boto3

kinesis = boto3.client("kinesis")

def handler(event, context):
    body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
    kinesis.put_record(StreamName=os.environ["CDP_EVENT_STREAM"], Data=body, PartitionKey="k")
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"success": True, "requestId": event["requestContext"]["requestId"]})}
'''

CONSUMER = '''
import base64, os
import boto3

table = boto3.resource("dynamodb").Table(os.environ["CDP_EVENTS_TABLE"])

def handler(event, context):
    for record in event["Records"]:
        table.put_item(Item={"pk": "stub", "sk": record["kinesis"]["sequenceNumber"],
                             "data": base64.b64decode(record["kinesis"]["data"]).decode()})
    return {"batchItemFailures": []}
'''


PROFILE_API = '''
import json

def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"routeKey": event["routeKey"], "rawPath": event["rawPath"],
                                "pathParameters": event.get("pathParameters")})}
'''

EVALUATOR = '''
def handler(event, context):
    assert all(r["eventSource"] == "aws:dynamodb" for r in event["Records"])
    return {"batchItemFailures": []}
'''


SCHEDULED = '''
def handler(event, context):
    return {"detail_type": event["detail-type"], "rule": event["resources"][0].rsplit("/", 1)[1],
            "remaining_ms": context.get_remaining_time_in_millis()}
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    functions = tmp_path_factory.mktemp("functions")
    for folder, code in (("collector", COLLECTOR), ("stream_consumer", CONSUMER), ("profile_api", PROFILE_API),
                         ("admin_api", PROFILE_API), ("segment_evaluator", EVALUATOR),
                         ("segment_backfill", SCHEDULED), ("segment_scheduler", SCHEDULED)):
        (functions / folder).mkdir()
        (functions / folder / "handler.py").write_text(code)
    before = dict(os.environ)
    with EmbeddedStack(port=0, aws_port=0, functions_dir=functions, write_key="unit-key") as running:
        yield running
    after = dict(os.environ)
    for env in (before, after):
        env.pop("PYTEST_CURRENT_TEST", None)
    assert after == before, "stop() must restore the environment"


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_a_request_flows_through_the_collector_the_stream_and_the_consumer(stack: EmbeddedStack) -> None:
    status, answer = post(f"{stack.api_url}/v1/track", {"userId": "u1", "event": "Signed Up"})

    assert status == 200 and answer["success"] is True
    assert stack.wait_idle(timeout=15)
    items = stack.session().client("dynamodb").scan(TableName=resources.EVENTS_TABLE.local_name)["Items"]
    assert [json.loads(i["data"]["S"]) for i in items] == [{"userId": "u1", "event": "Signed Up"}]


def test_the_health_check_is_ok_once_started(stack: EmbeddedStack) -> None:
    with urllib.request.urlopen(f"{stack.api_url}/health", timeout=5) as response:
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})


def test_the_write_key_is_seeded_as_the_local_source(stack: EmbeddedStack) -> None:
    table = stack.session().resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    item = table.get_item(Key={"key_hash": hash_write_key("unit-key")})["Item"]

    assert item["source_id"] == "src_local"
    assert item["enabled"] is True


def test_the_access_token_is_registered_as_a_hash_for_the_space(stack: EmbeddedStack) -> None:
    table = stack.session().resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    token = AccessTokenRegistry(table).find(stack.access_token)

    assert token is not None and token.enabled
    assert (token.token_id, token.space_id) == ("tok_local", "default")
    assert stack.access_token not in json.dumps(table.scan()["Items"], default=str)
    assert stack.access_token not in os.environ.values()


def test_profile_paths_go_to_the_profile_api_route_decoded(stack: EmbeddedStack) -> None:
    url = f"{stack.api_url}/v1/spaces/default/collections/users/profiles/phone:%2B1555%2F0/traits"
    with urllib.request.urlopen(url, timeout=10) as response:
        event = json.loads(response.read())

    assert event == {"routeKey": "GET /v1/spaces/{proxy+}",
                     "rawPath": "/v1/spaces/default/collections/users/profiles/phone:+1555/0/traits",
                     "pathParameters": {"proxy": "default/collections/users/profiles/phone:+1555/0/traits"}}


def test_boto3_in_this_process_talks_to_the_stacks_moto(stack: EmbeddedStack) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == stack.aws_endpoint_url
    names = boto3.client("kinesis").list_streams()["StreamNames"]
    assert resources.EVENT_STREAM.local_name in names


def test_the_banner_tells_how_to_send_and_look_at_events(stack: EmbeddedStack) -> None:
    text = banner(stack)

    assert stack.api_url in text and stack.aws_endpoint_url in text
    assert "curl -u unit-key: -H 'Content-Type: application/json'" in text
    assert f'analytics.host = "{stack.api_url}"' in text
    assert f"dynamodb scan --table-name {resources.EVENTS_TABLE.local_name}" in text
    assert f"s3://{resources.ARCHIVE_BUCKET.local_name}" in text
    assert stack.access_token in text


def test_a_taken_port_fails_fast_with_a_clear_error(stack: EmbeddedStack, tmp_path: Path) -> None:
    clash = EmbeddedStack(port=0, aws_port=stack.aws_port, functions_dir=tmp_path)
    with pytest.raises(OSError, match="port in use"):
        clash.start()
    assert os.environ["AWS_ENDPOINT_URL"] == stack.aws_endpoint_url


def test_the_local_command_is_registered_with_its_options() -> None:
    result = CliRunner().invoke(main, ["local", "--help"])

    assert result.exit_code == 0
    for option in ("--host", "--port", "--aws-port", "--write-key", "--access-token", "--demo / --no-demo",
                   "--shards", "--functions-dir"):
        assert option in result.output


def test_admin_paths_go_to_the_admin_api_route(stack: EmbeddedStack) -> None:
    request = urllib.request.Request(f"{stack.api_url}/v1/admin/identity-config", method="PUT", data=b"{}")
    with urllib.request.urlopen(request) as response:
        body = json.loads(response.read())
    assert body["routeKey"] == "ANY /v1/admin/{proxy+}" and body["rawPath"] == "/v1/admin/identity-config"


def test_profile_items_of_the_identity_table_reach_the_segment_evaluator_filtered(stack: EmbeddedStack) -> None:
    ddb = stack.session().client("dynamodb")
    table = resources.IDENTITY_TABLE.local_name
    assert stack.wait_idle(timeout=15)
    before = stack.profile_mapping.stats.records_delivered
    ddb.put_item(TableName=table, Item={"pk": {"S": "ident#user_id:zz"}, "profile_id": {"S": "pz"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "prof#pz"}, "status": {"S": "live"}, "version": {"N": "1"}})
    assert stack.wait_idle(timeout=15)
    # The pointer item is filtered out as the deployed mapping's filter criteria do.
    assert stack.profile_mapping.stats.records_delivered == before + 1


@pytest.mark.parametrize("schedule", resources.SCHEDULES, ids=lambda s: s.logical_id)
def test_each_schedule_rule_invokes_its_function_with_a_scheduled_event(
    stack: EmbeddedStack, schedule: resources.ScheduleSpec
) -> None:
    outcome = stack.schedules[schedule.logical_id].tick()
    assert not outcome.failed
    assert outcome.result["detail_type"] == "Scheduled Event"
    assert outcome.result["rule"] == schedule.logical_id
    # The local backfill gets a short timeout (it checkpoints every few seconds; stop() stays fast).
    limit = 5_000 if schedule is resources.SEGMENT_BACKFILL_SCHEDULE else schedule.function.timeout_s * 1000
    assert 0 < outcome.result["remaining_ms"] <= limit


def test_the_backfill_schedule_ticks_on_its_local_period(tmp_path: Path) -> None:
    from cdp.local.schedules import LocalSchedule

    calls: list[dict[str, object]] = []

    class Recorder:
        def invoke(self, event: dict[str, object]) -> None:
            calls.append(event)

    schedule = LocalSchedule("SegmentBackfillSchedule", Recorder(), period_s=0.05)
    schedule.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    schedule.stop()
    count = len(calls)
    time.sleep(0.1)
    assert count >= 3 and len(calls) == count  # none after stop()
    assert {c["source"] for c in calls} == {"aws.events"}


def test_the_demo_destinations_point_at_the_demo_inbox_and_are_valid() -> None:
    from cdp.local.demo_inbox import DemoInbox, demo_destinations, describe

    inbox = DemoInbox(echo=lambda line: None).start()
    try:
        destinations, secrets = demo_destinations(inbox.url)
        by_id = {d.id: d for d in destinations}
        assert by_id["demo-webhook"].settings.url == f"{inbox.url}/webhook"  # type: ignore[union-attr]
        assert secrets["/cdp/demo/slack-webhook-url"] == f"{inbox.url}/slack"
        assert by_id["demo-exports"].sync_schedule == "rate(1 day)"
        request = urllib.request.Request(f"{inbox.url}/webhook", method="POST", data=json.dumps(
            {"kind": "audience_membership", "event": "Audience Entered", "audience_id": "vip",
             "profile": {"identifiers": {"user_id": ["u1"]}}}).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert inbox.received[0][0] == "/webhook"
        assert describe(*inbox.received[0]) == "webhook: Audience Entered vip (u1)"
    finally:
        inbox.stop()
