"""The local stack and the CDK template build the same tables, stream, bucket and queue.

Both read cdp.resources; this test compares the two products directly: what
`cdp local` creates on moto against what CloudFormation would create.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from cdk_template_view import SynthesizedStack
from moto import mock_aws

from cdp import resources
from cdp.local.provisioning import provision

pytestmark = pytest.mark.infra


def _key_schema(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def _template_table(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "key_schema": _key_schema(props["KeySchema"]),
        "attributes": sorted((a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]),
        "indexes": sorted(
            (i["IndexName"], tuple(_key_schema(i["KeySchema"])), i["Projection"]["ProjectionType"])
            for i in props.get("GlobalSecondaryIndexes", [])
        ),
        "ttl": props.get("TimeToLiveSpecification", {}).get("AttributeName"),
        "stream": props.get("StreamSpecification", {}).get("StreamViewType"),
        "billing": props["BillingMode"],
    }


def _local_table(ddb: Any, name: str) -> dict[str, Any]:
    table = ddb.describe_table(TableName=name)["Table"]
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    return {
        "key_schema": _key_schema(table["KeySchema"]),
        "attributes": sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
        "indexes": sorted(
            (i["IndexName"], tuple(_key_schema(i["KeySchema"])), i["Projection"]["ProjectionType"])
            for i in table.get("GlobalSecondaryIndexes", [])
        ),
        "ttl": ttl.get("AttributeName") if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") else None,
        "stream": table.get("StreamSpecification", {}).get("StreamViewType"),
        "billing": table["BillingModeSummary"]["BillingMode"],
    }


def test_local_stack_creates_what_the_template_defines(cdp_stack: SynthesizedStack) -> None:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        provision(session)
        ddb = session.client("dynamodb")
        for spec in resources.TABLES:
            assert _local_table(ddb, spec.local_name) == _template_table(cdp_stack.props(spec.logical_id)), (
                spec.local_name
            )
        # Every table of the template is one of ours (nothing defined in one place only).
        assert set(cdp_stack.of_type("AWS::DynamoDB::Table")) == {s.logical_id for s in resources.TABLES}

        kinesis = session.client("kinesis")
        summary = kinesis.describe_stream_summary(StreamName=resources.EVENT_STREAM.local_name)
        stream_props = cdp_stack.props(resources.EVENT_STREAM.logical_id)
        assert summary["StreamDescriptionSummary"]["RetentionPeriodHours"] == stream_props["RetentionPeriodHours"]

        buckets = {b["Name"] for b in session.client("s3").list_buckets()["Buckets"]}
        assert {b.local_name for b in resources.BUCKETS} <= buckets
        for bucket in resources.BUCKETS:
            assert bucket.logical_id in cdp_stack.resources

        queues = session.client("sqs").list_queues().get("QueueUrls", [])
        for queue in resources.QUEUES:
            assert any(url.endswith("/" + queue.local_name) for url in queues)
            template_queue = cdp_stack.props(queue.logical_id)
            local = session.client("sqs").get_queue_attributes(
                QueueUrl=next(u for u in queues if u.endswith("/" + queue.local_name)),
                AttributeNames=["MessageRetentionPeriod"])["Attributes"]
            assert int(local["MessageRetentionPeriod"]) == template_queue["MessageRetentionPeriod"]


def test_the_local_gateway_routes_what_the_template_routes(cdp_stack: SynthesizedStack) -> None:
    """Same route keys, each to the same function, as the local stack's gateway (built from HTTP_ROUTES)."""
    template = {}
    for route in cdp_stack.of_type("AWS::ApiGatewayV2::Route").values():
        integration = cdp_stack.props(cdp_stack.ref_target(route["Properties"]["Target"]["Fn::Join"][1][1]))
        template[route["Properties"]["RouteKey"]] = integration["IntegrationUri"]["Fn::GetAtt"][0]
    assert template == {route.route_key: route.function.logical_id for route in resources.HTTP_ROUTES}


def test_local_profile_stream_mapping_is_the_deployed_one(cdp_stack: SynthesizedStack) -> None:
    from cdp.local.stack import local_dynamodb_spec

    local = local_dynamodb_spec(resources.SEGMENT_EVALUATOR_ESM)
    (deployed,) = [m["Properties"] for m in cdp_stack.of_type("AWS::Lambda::EventSourceMapping").values()
                   if m["Properties"]["FunctionName"] == {"Ref": resources.SEGMENT_EVALUATOR_FUNCTION.logical_id}]
    assert deployed["EventSourceArn"] == {"Fn::GetAtt": [resources.IDENTITY_TABLE.logical_id, "StreamArn"]}
    assert (local.batch_size, local.max_batching_window_s, local.starting_position) == (
        deployed["BatchSize"], deployed["MaximumBatchingWindowInSeconds"], deployed["StartingPosition"])
    assert (local.bisect_batch_on_error, local.retry_attempts, local.max_record_age_s) == (
        deployed["BisectBatchOnFunctionError"], deployed["MaximumRetryAttempts"],
        deployed["MaximumRecordAgeInSeconds"])
    assert local.report_batch_item_failures == ("ReportBatchItemFailures" in deployed["FunctionResponseTypes"])
    assert list(local.filter_patterns) == [f["Pattern"] for f in deployed["FilterCriteria"]["Filters"]]
    on_failure = deployed["DestinationConfig"]["OnFailure"]["Destination"]
    assert on_failure == {"Fn::GetAtt": [resources.SEGMENT_EVALUATOR_DLQ.logical_id, "Arn"]}
