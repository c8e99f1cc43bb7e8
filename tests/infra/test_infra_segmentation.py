"""Segmentation: the memberships table, the identity table's stream, the evaluator, its mapping and grants."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources
from cdp.local.event_filtering import FilterCriteria

pytestmark = pytest.mark.infra

EVALUATOR = resources.SEGMENT_EVALUATOR_FUNCTION.logical_id
ESM = resources.SEGMENT_EVALUATOR_ESM
# DynamoDbStreamEventSourceSpec field -> (CloudFormation property, value it must have).
ESM_PROPERTIES: dict[str, tuple[str, Any]] = {
    "batch_size": ("BatchSize", ESM.batch_size),
    "max_batching_window_s": ("MaximumBatchingWindowInSeconds", ESM.max_batching_window_s),
    "bisect_batch_on_error": ("BisectBatchOnFunctionError", ESM.bisect_batch_on_error),
    "retry_attempts": ("MaximumRetryAttempts", ESM.retry_attempts),
    "max_record_age_s": ("MaximumRecordAgeInSeconds", ESM.max_record_age_s),
    "report_batch_item_failures": (
        "FunctionResponseTypes",
        ["ReportBatchItemFailures"] if ESM.report_batch_item_failures else None,
    ),
    "starting_position": ("StartingPosition", ESM.starting_position),
    "filter_patterns": ("FilterCriteria", {"Filters": [{"Pattern": p} for p in ESM.filter_patterns]}),
    "parallelization_factor": ("ParallelizationFactor", ESM.parallelization_factor),
}


def _mapping(cdp_stack: SynthesizedStack) -> dict[str, Any]:
    mappings = [m for m in cdp_stack.of_type("AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"] == {"Ref": EVALUATOR}]
    assert len(mappings) == 1
    return dict(mappings[0]["Properties"])


def test_every_esm_setting_of_resources_py_is_mapped() -> None:
    assert {field.name for field in dataclasses.fields(ESM)} == set(ESM_PROPERTIES)


def test_evaluator_mapping_is_exactly_segment_evaluator_esm_on_the_identity_stream(
    cdp_stack: SynthesizedStack,
) -> None:
    props = _mapping(cdp_stack)
    props.pop("Tags", None)
    expected = {cfn: value for cfn, value in ESM_PROPERTIES.values() if value is not None}
    expected |= {
        "EventSourceArn": {"Fn::GetAtt": [resources.IDENTITY_TABLE.logical_id, "StreamArn"]},
        "FunctionName": {"Ref": EVALUATOR},
        "DestinationConfig": {
            "OnFailure": {"Destination": {"Fn::GetAtt": [resources.SEGMENT_EVALUATOR_DLQ.logical_id, "Arn"]}}
        },
    }
    assert props == expected


def _record(keys: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"Keys": {"pk": {"S": keys}}}
    if new is not None:
        body["NewImage"] = {"pk": {"S": keys}, **new}
    if old is not None:
        body["OldImage"] = {"pk": {"S": keys}, **old}
    return {"eventName": "MODIFY", "dynamodb": body}


@pytest.mark.parametrize(("record", "passes"), [
    (_record("prof#p1", {"status": {"S": "live"}}, None), True),
    (_record("prof#p1", {"status": {"S": "merged"}}, {"status": {"S": "live"}}), True),
    (_record("ident#anonymous_id:a1", {"solo": {"BOOL": True}}, None), True),
    (_record("ident#anonymous_id:a1", {"profile_id": {"S": "p2"}}, {"solo": {"BOOL": True}}), True),
    (_record("ident#user_id:u1", {"profile_id": {"S": "p2"}}, {"profile_id": {"S": "p1"}}), False),
    (_record("acct#g1", {"state": {"S": "{}"}}, None), True),  # an account: its members follow its traits
    (_record("config#identity", {"config": {"S": "{}"}}, None), False),
])
def test_the_deployed_filter_passes_only_profile_and_account_items(
    cdp_stack: SynthesizedStack, record: dict[str, Any], passes: bool
) -> None:
    # The template's patterns, run through the local stack's filter emulation.
    patterns = [f["Pattern"] for f in _mapping(cdp_stack)["FilterCriteria"]["Filters"]]
    assert all(json.loads(p) for p in patterns)
    assert FilterCriteria.from_patterns(patterns).matches(record) is passes


def test_identity_table_streams_new_and_old_images(cdp_stack: SynthesizedStack) -> None:
    props = cdp_stack.props(resources.IDENTITY_TABLE.logical_id)
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_memberships_table_is_profile_first_with_sparse_member_and_due_indexes(cdp_stack: SynthesizedStack) -> None:
    props = cdp_stack.props(resources.MEMBERSHIPS_TABLE.logical_id)
    assert props["KeySchema"] == [{"AttributeName": "profile_id", "KeyType": "HASH"},
                                  {"AttributeName": "audience_id", "KeyType": "RANGE"}]
    indexes = {i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]]
               for i in props["GlobalSecondaryIndexes"]}
    assert indexes == {"members": ["member_of", "profile_id"], "due": ["next_check", "profile_id"]}
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert cdp_stack.resources[resources.MEMBERSHIPS_TABLE.logical_id]["DeletionPolicy"] == "Retain"


def test_evaluator_environment_names_exactly_the_resources_it_uses(cdp_stack: SynthesizedStack) -> None:
    env = cdp_stack.props(EVALUATOR)["Environment"]["Variables"]
    assert env == {
        "POWERTOOLS_SERVICE_NAME": "cdp", "POWERTOOLS_METRICS_NAMESPACE": "CDP", "LOG_LEVEL": "INFO",
        resources.MEMBERSHIPS_TABLE.env: {"Ref": resources.MEMBERSHIPS_TABLE.logical_id},
        resources.SEGMENTS_TABLE.env: {"Ref": resources.SEGMENTS_TABLE.logical_id},
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.EVENTS_TABLE.env: {"Ref": resources.EVENTS_TABLE.logical_id},
        resources.EVENT_STREAM.env: {"Ref": resources.EVENT_STREAM.logical_id},
        "CDP_SEGMENTS_CACHE_SECONDS": "60",
    }


def test_evaluator_has_least_privilege(cdp_stack: SynthesizedStack) -> None:
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(EVALUATOR))
    log_group = cdp_stack.ref_target(cdp_stack.props(EVALUATOR)["LoggingConfig"]["LogGroup"]) + ".Arn"
    assert grants == {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {log_group},
        "logs:PutLogEvents": {log_group},
        "dynamodb:ListStreams": {"*"},
        "dynamodb:DescribeStream": {"IdentityTable.StreamArn"},
        "dynamodb:GetRecords": {"IdentityTable.StreamArn"},
        "dynamodb:GetShardIterator": {"IdentityTable.StreamArn"},
        "dynamodb:Query": {"MembershipsTable.Arn", "EventsTable.Arn"},
        "dynamodb:BatchWriteItem": {"MembershipsTable.Arn"},
        "dynamodb:Scan": {"SegmentsTable.Arn"},
        "dynamodb:GetItem": {"IdentityTable.Arn"},
        "dynamodb:BatchGetItem": {"IdentityTable.Arn", "MembershipsTable.Arn"},
        "dynamodb:UpdateItem": {"IdentityTable.Arn"},  # touching an account's members
        "kinesis:PutRecords": {"EventStream.Arn"},
        "sqs:SendMessage": {"SegmentEvaluatorDlq.Arn"},
        "sqs:GetQueueAttributes": {"SegmentEvaluatorDlq.Arn"},
        "sqs:GetQueueUrl": {"SegmentEvaluatorDlq.Arn"},
    }


def _statements(cdp_stack: SynthesizedStack, role: str) -> list[dict[str, Any]]:
    found = []
    for policy in cdp_stack.of_type("AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def test_evaluator_reads_only_profile_and_account_items_and_link_records(cdp_stack: SynthesizedStack) -> None:
    statements = _statements(cdp_stack, cdp_stack.role_of(EVALUATOR))
    by_key = {}
    for statement in statements:
        if statement.get("Condition"):
            by_key[json.dumps(statement["Resource"], sort_keys=True)] = statement["Condition"]
    leading = {key: cond["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] for key, cond in by_key.items()}
    assert sorted(leading.values()) == [["acct#*", "prof#*", "ident#*"], ["p#*", "g#*"]]


def test_evaluator_dlq_is_encrypted_and_keeps_messages_14_days(cdp_stack: SynthesizedStack) -> None:
    props = cdp_stack.props(resources.SEGMENT_EVALUATOR_DLQ.logical_id)
    assert props["SqsManagedSseEnabled"] is True
    assert props["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_evaluator_has_alarms_on_lag_dlq_and_errors(cdp_stack: SynthesizedStack) -> None:
    alarms = [a["Properties"] for a in cdp_stack.of_type("AWS::CloudWatch::Alarm").values()]

    def on(metric: str, dimension: dict[str, Any]) -> list[dict[str, Any]]:
        return [a for a in alarms if a.get("MetricName") == metric and dimension in a.get("Dimensions", [])]

    function = {"Name": "FunctionName", "Value": {"Ref": EVALUATOR}}
    queue = {"Name": "QueueName", "Value": {"Fn::GetAtt": [resources.SEGMENT_EVALUATOR_DLQ.logical_id, "QueueName"]}}
    (age,) = on("IteratorAge", function)
    assert age["Threshold"] == 5 * 60 * 1000 and age["EvaluationPeriods"] == 5
    (errors,) = on("Errors", function)
    assert errors["Threshold"] == 0
    (depth,) = on("ApproximateNumberOfMessagesVisible", queue)
    assert depth["Threshold"] == 0
