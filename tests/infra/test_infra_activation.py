"""Activation: per destination its queue, dead-letter queue, function, mapping and role;
the router on the memberships stream and the event stream; synth-time validation.

``cdp_stack`` is the default deployment (cdk.json: no destinations); ``cdp_stack_activation``
declares every destination type (tests/infra/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Annotations, Match
from cdk_template_view import SynthesizedStack
from cfnlint.api import ManualArgs, lint

from cdp import resources
from cdp.activation.destinations import (
    DestinationConfig,
    DestinationType,
    destinations_document,
    looks_like_secret,
    parse_destinations,
)
from cdp.activation.filters import audience_filters, trigger_filters
from cdp.local.event_filtering import FilterCriteria

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "CdpStack-"  # <stack name>- (infra.app.STACK_NAME)
PARTITION, REGION, ACCOUNT = "AWS::Partition.Ref", "AWS::Region.Ref", "AWS::AccountId.Ref"
ROUTER = resources.ACTIVATION_ROUTER_FUNCTION.logical_id
ROUTER_DLQ = resources.ACTIVATION_ROUTER_DLQ.logical_id
SQS_CONSUMER_ACTIONS = ("sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                        "sqs:ReceiveMessage")


def _arn(service: str, resource: str) -> str:
    """An ARN in this stack's account and region, as ``cdk_template_view.render`` shows it."""
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{resource}"


# What each configured destination may reach besides its queues, tables and logs: exactly
# its own secret (Secrets Manager: the name and "-" + 6 characters; SSM: the parameter),
# its own bus, customer queue or bucket folder. Keyed by the ids of conftest's destinations.
LAKE_KEY = "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TARGET_GRANTS: dict[str, dict[str, set[str]]] = {
    "crm-webhook": {"secretsmanager:GetSecretValue": {_arn("secretsmanager", "secret:cdp/webhooks/crm-??????")}},
    "sales-slack": {"ssm:GetParameter": {_arn("ssm", "parameter/cdp/slack/sales")}},
    "ops-bus": {"events:PutEvents": {_arn("events", "event-bus/customer-events")}},
    "partner-queue": {"sqs:SendMessage": {"arn:aws:sqs:eu-west-1:210987654321:partner-inbox.fifo"}},
    # cdp.activation.s3_export: "<prefix>/<destination id>/..." (a "/" added to the prefix)
    "lake-export": {"s3:PutObject": {f"arn:{PARTITION}:s3:::acme-data-lake/cdp/audiences/lake-export/*"},
                    "s3:AbortMultipartUpload": {f"arn:{PARTITION}:s3:::acme-data-lake/cdp/audiences/lake-export/*"},
                    # the bucket's customer-managed key (kms_key_arn), that key only
                    "kms:GenerateDataKey": {LAKE_KEY}, "kms:Decrypt": {LAKE_KEY}},
    "meta-ads": {"secretsmanager:GetSecretValue": {_arn("secretsmanager", "secret:cdp/meta/token-??????")},
                 "ssm:GetParameter": {_arn("ssm", "parameter/cdp/meta/app-secret")},  # app_secret_name
                 # its secret's customer-managed key (secrets_kms_key_arn)
                 "kms:Decrypt": {"arn:aws:kms:us-east-1:123456789012:key/0000aaaa-12ab-34cd-56ef-1234567890ab"}},
    "google-ads": {"secretsmanager:GetSecretValue": {_arn("secretsmanager", "secret:cdp/google/ads-??????")}},
    "hubspot-crm": {"secretsmanager:GetSecretValue": {_arn("secretsmanager", "secret:cdp/hubspot/token-??????")}},
}


# --- helpers over the synthesized template ---------------------------------------------------

def _destinations(synthesized: SynthesizedStack) -> tuple[DestinationConfig, ...]:
    """The destinations of the fixture's context, parsed here (independently of the stack)."""
    raw = synthesized.app.node.try_get_context("destinations")
    return tuple(parse_destinations(json.loads(raw)))


def _function_id(destination: DestinationConfig) -> str:
    return resources.destination_logical_id(destination.id) + "Function"


def _mappings_of(synthesized: SynthesizedStack, function_id: str) -> list[dict[str, Any]]:
    return [dict(m["Properties"]) for m in synthesized.of_type("AWS::Lambda::EventSourceMapping").values()
            if m["Properties"]["FunctionName"] == {"Ref": function_id}]


def _queue_of(synthesized: SynthesizedStack, destination: DestinationConfig) -> str:
    (mapping,) = _mappings_of(synthesized, _function_id(destination))
    return synthesized.ref_target(mapping["EventSourceArn"])


def _dlq_of(synthesized: SynthesizedStack, queue_id: str) -> str:
    return synthesized.ref_target(synthesized.props(queue_id)["RedrivePolicy"]["deadLetterTargetArn"])


def _router_mapping(synthesized: SynthesizedStack, source: str) -> dict[str, Any]:
    (mapping,) = [m for m in _mappings_of(synthesized, ROUTER) if synthesized.ref_target(m["EventSourceArn"]) == source]
    return mapping


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _asset_dir(synthesized: SynthesizedStack, function_id: str) -> Path:
    """The staged code folder of a function (cdk.out/asset.<hash>)."""
    key = synthesized.props(function_id)["Code"]["S3Key"]
    folder = Path(synthesized.app.outdir) / f"asset.{key.removesuffix('.zip')}"
    assert folder.is_dir(), folder
    return folder


# --- without destinations ------------------------------------------------------------------

def test_default_stack_has_the_delivery_log_and_no_activation_functions_or_queues(cdp_stack: SynthesizedStack) -> None:
    props = cdp_stack.props(resources.DELIVERY_LOG_TABLE.logical_id)
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    functions = set(cdp_stack.of_type("AWS::Lambda::Function"))
    assert ROUTER not in functions
    assert not [f for f in functions if f.startswith("Destination")]
    queues = set(cdp_stack.of_type("AWS::SQS::Queue"))
    assert queues == {q.logical_id for q in resources.QUEUES}
    sources = {cdp_stack.ref_target(m["Properties"]["EventSourceArn"])
               for m in cdp_stack.of_type("AWS::Lambda::EventSourceMapping").values()}
    assert resources.MEMBERSHIPS_TABLE.logical_id not in sources  # nothing reads the memberships stream


# --- per destination: queues ---------------------------------------------------------------

def test_the_fixture_declares_every_destination_type(cdp_stack_activation: SynthesizedStack) -> None:
    destinations = _destinations(cdp_stack_activation)
    assert {d.type for d in destinations} == set(get_args(DestinationType))
    assert {d.id for d in destinations} == set(TARGET_GRANTS)
    assert cdp_stack_activation.stack.settings.destinations == destinations  # type: ignore[attr-defined]


def test_each_destination_has_its_function_queue_and_dead_letter_queue(cdp_stack_activation: SynthesizedStack) -> None:
    destinations = _destinations(cdp_stack_activation)
    functions = cdp_stack_activation.of_type("AWS::Lambda::Function")
    queues = cdp_stack_activation.of_type("AWS::SQS::Queue")
    seen: set[str] = set()
    for destination in destinations:
        assert _function_id(destination) in functions
        queue = _queue_of(cdp_stack_activation, destination)
        dlq = _dlq_of(cdp_stack_activation, queue)
        assert {queue, dlq} <= set(queues)
        assert not {queue, dlq} & seen, f"{destination.id} shares a queue"
        seen |= {queue, dlq}
    # Every queue is a destination's, the router's DLQ, or one of the pipeline's.
    assert set(queues) == seen | {ROUTER_DLQ} | {q.logical_id for q in resources.QUEUES}
    assert {f for f in functions if f.startswith("Destination")} == {_function_id(d) for d in destinations}


@pytest.mark.parametrize("destination_id", sorted(TARGET_GRANTS))
def test_destination_queue_attributes(cdp_stack_activation: SynthesizedStack, destination_id: str) -> None:
    destination = {d.id: d for d in _destinations(cdp_stack_activation)}[destination_id]
    fifo = destination.type in resources.FIFO_DESTINATION_TYPES
    assert fifo is (destination.type in {"webhook", "slack", "eventbridge", "sqs"})
    queue = _queue_of(cdp_stack_activation, destination)
    dlq = _dlq_of(cdp_stack_activation, queue)
    props = cdp_stack_activation.props(queue)
    props.pop("Tags", None)
    expected: dict[str, Any] = {
        "QueueName": resources.destination_queue_name(PREFIX, destination.id, destination.type),
        "VisibilityTimeout": resources.DESTINATION_VISIBILITY_S,
        "MessageRetentionPeriod": resources.DESTINATION_RETENTION_S,
        "SqsManagedSseEnabled": True,
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]}, "maxReceiveCount": 1000},
    }
    if fifo:  # high-throughput FIFO: deduplication and throughput per message group (profile)
        expected |= {"FifoQueue": True, "DeduplicationScope": "messageGroup",
                     "FifoThroughputLimit": "perMessageGroupId"}
    assert props == expected
    dlq_props = cdp_stack_activation.props(dlq)
    dlq_props.pop("Tags", None)
    expected_dlq: dict[str, Any] = {
        "QueueName": resources.destination_queue_name(PREFIX, destination.id, destination.type, dead_letter=True),
        "MessageRetentionPeriod": resources.DEAD_LETTER_RETENTION_S,
        "SqsManagedSseEnabled": True,
    }
    if fifo:
        expected_dlq["FifoQueue"] = True
    assert dlq_props == expected_dlq
    # SQS keeps a message its retention from the first enqueue: the DLQ must outlive the queue.
    assert resources.DEAD_LETTER_RETENTION_S > resources.DESTINATION_RETENTION_S
    # Never redelivered while a batch still runs (6x the function's timeout, AWS guidance).
    assert props["VisibilityTimeout"] >= 6 * cdp_stack_activation.props(_function_id(destination))["Timeout"]


def test_every_activation_queue_refuses_requests_without_tls(cdp_stack_activation: SynthesizedStack) -> None:
    policies: dict[str, list[dict[str, Any]]] = {}
    for policy in cdp_stack_activation.of_type("AWS::SQS::QueuePolicy").values():
        for queue in policy["Properties"]["Queues"]:
            policies.setdefault(cdp_stack_activation.ref_target(queue), []).extend(
                policy["Properties"]["PolicyDocument"]["Statement"])
    activation_queues = {ROUTER_DLQ}
    for destination in _destinations(cdp_stack_activation):
        queue = _queue_of(cdp_stack_activation, destination)
        activation_queues |= {queue, _dlq_of(cdp_stack_activation, queue)}
    for queue in activation_queues:
        assert policies.get(queue) == [{
            "Action": "sqs:*", "Effect": "Deny", "Principal": {"AWS": "*"},
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            "Resource": {"Fn::GetAtt": [queue, "Arn"]},
        }], queue
        assert cdp_stack_activation.props(queue)["SqsManagedSseEnabled"] is True


# --- per destination: function, mapping, role ----------------------------------------------

@pytest.mark.parametrize("destination_id", sorted(TARGET_GRANTS))
def test_destination_mapping_is_destination_esm(cdp_stack_activation: SynthesizedStack, destination_id: str) -> None:
    destination = {d.id: d for d in _destinations(cdp_stack_activation)}[destination_id]
    esm = resources.destination_esm(destination.type, destination.effective_batch_size)
    (props,) = _mappings_of(cdp_stack_activation, _function_id(destination))
    props.pop("Tags", None)
    queue = _queue_of(cdp_stack_activation, destination)
    expected: dict[str, Any] = {
        "EventSourceArn": {"Fn::GetAtt": [queue, "Arn"]},
        "FunctionName": {"Ref": _function_id(destination)},
        "BatchSize": esm.batch_size,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": destination.max_concurrency},
    }
    assert esm.report_batch_item_failures
    if esm.max_batching_window_s:
        expected["MaximumBatchingWindowInSeconds"] = esm.max_batching_window_s
    assert props == expected
    if destination.type in resources.FIFO_DESTINATION_TYPES:  # Lambda: FIFO batches of at most 10, no window
        assert props["BatchSize"] <= 10 and "MaximumBatchingWindowInSeconds" not in props
    else:  # batch APIs: many changes gathered into one request
        assert props["MaximumBatchingWindowInSeconds"] == 30


def test_max_concurrency_setting_reaches_the_mapping(cdp_stack_activation: SynthesizedStack) -> None:
    by_id = {d.id: d for d in _destinations(cdp_stack_activation)}
    assert by_id["crm-webhook"].max_concurrency == 5
    (props,) = _mappings_of(cdp_stack_activation, _function_id(by_id["crm-webhook"]))
    assert props["ScalingConfig"] == {"MaximumConcurrency": 5}


@pytest.mark.parametrize("destination_id", sorted(TARGET_GRANTS))
def test_destination_role_reaches_only_its_own_queues_secret_and_target(
    cdp_stack_activation: SynthesizedStack, destination_id: str,
) -> None:
    destination = {d.id: d for d in _destinations(cdp_stack_activation)}[destination_id]
    function = _function_id(destination)
    queue = _queue_of(cdp_stack_activation, destination)
    dlq = _dlq_of(cdp_stack_activation, queue)
    log_group = cdp_stack_activation.ref_target(cdp_stack_activation.props(function)["LoggingConfig"]["LogGroup"])
    expected: dict[str, set[str]] = {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {f"{log_group}.Arn"},
        "logs:PutLogEvents": {f"{log_group}.Arn"},
        "dynamodb:BatchGetItem": {"IdentityTable.Arn", "MembershipsTable.Arn"},
        "dynamodb:Query": {"MembershipsTable.Arn"},
        "dynamodb:UpdateItem": {"DeliveryLogTable.Arn"},
        **{action: {f"{queue}.Arn"} for action in SQS_CONSUMER_ACTIONS},
        "sqs:GetQueueUrl": {f"{queue}.Arn", f"{dlq}.Arn"},
        "sqs:SendMessage": {f"{dlq}.Arn"},  # dead letters with their reason; never its own queue
    }
    for action, arns in TARGET_GRANTS[destination.id].items():
        expected[action] = expected.get(action, set()) | arns
    assert cdp_stack_activation.grants_of_role(cdp_stack_activation.role_of(function)) == expected


def test_no_destination_role_reaches_another_destinations_resources(cdp_stack_activation: SynthesizedStack) -> None:
    destinations = _destinations(cdp_stack_activation)
    owned: dict[str, set[str]] = {}
    for destination in destinations:
        queue = _queue_of(cdp_stack_activation, destination)
        owned[destination.id] = {f"{queue}.Arn", f"{_dlq_of(cdp_stack_activation, queue)}.Arn"} | {
            arn for arns in TARGET_GRANTS[destination.id].values() for arn in arns}
    for destination in destinations:
        reached = {arn for arns in cdp_stack_activation.grants_of_role(
            cdp_stack_activation.role_of(_function_id(destination))).values() for arn in arns}
        for other, theirs in owned.items():
            if other != destination.id:
                assert not reached & theirs, f"{destination.id} reaches {other}'s {sorted(reached & theirs)}"


def test_identity_reads_are_limited_to_identifier_and_profile_items(cdp_stack_activation: SynthesizedStack) -> None:
    for function in [ROUTER, *(_function_id(d) for d in _destinations(cdp_stack_activation))]:
        statements = cdp_stack_activation.statements_of_role(cdp_stack_activation.role_of(function))
        (identity,) = [s for s in statements if s["Resource"] == {"Fn::GetAtt": ["IdentityTable", "Arn"]}]
        assert identity["Action"] == "dynamodb:BatchGetItem"
        assert identity["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["ident#*", "prof#*"]}}


def _shared_environment() -> dict[str, Any]:
    """What the router and every destination function must be told (tables, queue prefix)."""
    return {
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.EVENTS_TABLE.env: {"Ref": resources.EVENTS_TABLE.logical_id},
        resources.MEMBERSHIPS_TABLE.env: {"Ref": resources.MEMBERSHIPS_TABLE.logical_id},
        resources.DELIVERY_LOG_TABLE.env: {"Ref": resources.DELIVERY_LOG_TABLE.logical_id},
        resources.DESTINATION_QUEUE_PREFIX_ENV: PREFIX,
    }


def _assert_environment(variables: dict[str, Any], required: dict[str, Any]) -> None:
    """``required`` is there, and everything else is Powertools' settings or a reference to a
    resource of the stack: no literal that could be a secret or a setting of a destination."""
    assert {k: variables.get(k) for k in required} == required
    powertools = {"POWERTOOLS_SERVICE_NAME": "cdp", "POWERTOOLS_METRICS_NAMESPACE": "CDP", "LOG_LEVEL": "INFO"}
    assert {k: variables.get(k) for k in powertools} == powertools
    for name, value in variables.items():
        if name in required or name in powertools:
            continue
        assert isinstance(value, dict) and set(value) <= {"Ref", "Fn::GetAtt"}, (name, value)


def test_destination_functions_know_their_id_and_nothing_secret(cdp_stack_activation: SynthesizedStack) -> None:
    for destination in _destinations(cdp_stack_activation):
        props = cdp_stack_activation.props(_function_id(destination))
        _assert_environment(props["Environment"]["Variables"],
                            {**_shared_environment(), resources.DESTINATION_ID_ENV: destination.id})
        assert props["Handler"] == "handler.handler"
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Timeout"] == resources.DESTINATION_FUNCTION.timeout_s
        assert props["MemorySize"] == resources.DESTINATION_FUNCTION.memory_mb


def test_no_secret_values_in_the_template(cdp_stack_activation: SynthesizedStack) -> None:
    template = cdp_stack_activation.json
    # No dynamic references: CloudFormation would put the value into the resource.
    assert not [s for s in _strings(template) if "{{resolve:" in s]
    secret_names = {value for d in _destinations(cdp_stack_activation) for name, value in d.settings
                    if name.endswith("secret_name") and value}
    for function_id, function in cdp_stack_activation.of_type("AWS::Lambda::Function").items():
        props = function["Properties"]
        texts = _strings(props.get("Environment", {})) + _strings(props.get("Description", ""))
        assert not [t for t in texts if looks_like_secret(t)], function_id
        # Not even the names: functions read the configuration file beside the handler.
        assert not [t for t in texts if t in secret_names], function_id
    # Secret names appear in IAM policies only.
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::Role"):
            continue
        assert not [s for s in _strings(resource) for name in secret_names if name in s], logical_id


def test_destinations_json_beside_each_handler_is_the_configuration(cdp_stack_activation: SynthesizedStack) -> None:
    destinations = _destinations(cdp_stack_activation)
    document = destinations_document(destinations)
    for function in [ROUTER, *(_function_id(d) for d in destinations)]:
        folder = _asset_dir(cdp_stack_activation, function)
        assert (folder / "handler.py").is_file()
        assert (folder / resources.DESTINATIONS_FILE).read_text(encoding="utf-8") == document, function
    # One code asset for every destination function (the configuration is the same file).
    assert len({cdp_stack_activation.props(_function_id(d))["Code"]["S3Key"] for d in destinations}) == 1


# --- the router ----------------------------------------------------------------------------

def _stream_esm_expected(spec: Any, function: str, source: dict[str, Any], filters: list[str]) -> dict[str, Any]:
    expected: dict[str, Any] = {
        "FunctionName": {"Ref": function},
        "EventSourceArn": source,
        "BatchSize": spec.batch_size,
        "MaximumBatchingWindowInSeconds": spec.max_batching_window_s,
        "BisectBatchOnFunctionError": spec.bisect_batch_on_error,
        "MaximumRetryAttempts": spec.retry_attempts,
        "MaximumRecordAgeInSeconds": spec.max_record_age_s,
        "ParallelizationFactor": spec.parallelization_factor,
        "StartingPosition": spec.starting_position,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [ROUTER_DLQ, "Arn"]}}},
        # No ReportBatchItemFailures: the router fails or succeeds a batch as a whole (the
        # resent messages are deduplicated by their FIFO deduplication ids).
    }
    if filters:
        expected["FilterCriteria"] = {"Filters": [{"Pattern": p} for p in filters]}
    return expected


def test_router_reads_the_memberships_stream_filtered_to_the_destinations_audiences(
    cdp_stack_activation: SynthesizedStack,
) -> None:
    destinations = _destinations(cdp_stack_activation)
    props = _router_mapping(cdp_stack_activation, resources.MEMBERSHIPS_TABLE.logical_id)
    props.pop("Tags", None)
    filters = audience_filters(destinations)
    assert filters, "the fixture's audiences fit one pattern"
    assert props == _stream_esm_expected(resources.ACTIVATION_MEMBERSHIPS_ESM, ROUTER,
                                         {"Fn::GetAtt": [resources.MEMBERSHIPS_TABLE.logical_id, "StreamArn"]},
                                         filters)


def _membership_record(audience: str) -> dict[str, Any]:
    image = {"profile_id": {"S": "p1"}, "audience_id": {"S": audience}, "member": {"BOOL": True}}
    return {"eventName": "MODIFY", "dynamodb": {"Keys": {"profile_id": {"S": "p1"}, "audience_id": {"S": audience}},
                                                "NewImage": image, "OldImage": image}}


@pytest.mark.parametrize(("audience", "passes"), [
    ("vip", True), ("churn-risk", True), ("newsletter", True),
    ("paused-list", False),  # only the disabled destination lists it
    ("someone-elses", False),
])
def test_the_deployed_audience_filter_passes_only_configured_audiences(
    cdp_stack_activation: SynthesizedStack, audience: str, passes: bool,
) -> None:
    props = _router_mapping(cdp_stack_activation, resources.MEMBERSHIPS_TABLE.logical_id)
    patterns = [f["Pattern"] for f in props["FilterCriteria"]["Filters"]]
    assert FilterCriteria.from_patterns(patterns).matches(_membership_record(audience)) is passes


def test_router_reads_the_event_stream_filtered_to_trigger_events_from_latest(
    cdp_stack_activation: SynthesizedStack,
) -> None:
    destinations = _destinations(cdp_stack_activation)
    props = _router_mapping(cdp_stack_activation, resources.EVENT_STREAM.logical_id)
    props.pop("Tags", None)
    assert resources.ACTIVATION_EVENTS_ESM.starting_position == "LATEST"
    assert props == _stream_esm_expected(resources.ACTIVATION_EVENTS_ESM, ROUTER,
                                         {"Fn::GetAtt": [resources.EVENT_STREAM.logical_id, "Arn"]},
                                         trigger_filters(destinations))
    assert len(props["FilterCriteria"]["Filters"]) == 3  # track, page and identify triggers


@pytest.mark.parametrize(("event", "passes"), [
    ({"type": "track", "event": "Order Completed"}, True),
    ({"type": "track", "event": "Product Viewed"}, False),
    ({"type": "page", "name": "Pricing"}, True),
    ({"type": "page", "name": "Home"}, False),
    ({"type": "identify"}, True),
    ({"type": "group"}, False),
])
def test_the_deployed_trigger_filter_passes_only_trigger_events(
    cdp_stack_activation: SynthesizedStack, event: dict[str, Any], passes: bool,
) -> None:
    props = _router_mapping(cdp_stack_activation, resources.EVENT_STREAM.logical_id)
    patterns = [f["Pattern"] for f in props["FilterCriteria"]["Filters"]]
    # Lambda filters a Kinesis record's JSON data under "data" (the collector's record format).
    record = {"data": {"kind": "event", "event": {"userId": "u1", **event}}}
    assert FilterCriteria.from_patterns(patterns).matches(record) is passes
    assert not FilterCriteria.from_patterns(patterns).matches({"data": {"kind": "rejected", "event": event}})


def test_router_sends_only_to_destination_queues_not_their_dead_letter_queues(
    cdp_stack_activation: SynthesizedStack,
) -> None:
    destinations = _destinations(cdp_stack_activation)
    queues = {f"{_queue_of(cdp_stack_activation, d)}.Arn" for d in destinations}
    dead_letters = {f"{_dlq_of(cdp_stack_activation, _queue_of(cdp_stack_activation, d))}.Arn" for d in destinations}
    log_group = cdp_stack_activation.ref_target(cdp_stack_activation.props(ROUTER)["LoggingConfig"]["LogGroup"])
    grants = cdp_stack_activation.grants_of_role(cdp_stack_activation.role_of(ROUTER))
    assert grants == {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {f"{log_group}.Arn"},
        "logs:PutLogEvents": {f"{log_group}.Arn"},
        "dynamodb:BatchGetItem": {"IdentityTable.Arn", "MembershipsTable.Arn"},
        "dynamodb:Query": {"MembershipsTable.Arn"},
        # the memberships stream (ListStreams has no resource-level permissions)
        "dynamodb:ListStreams": {"*"},
        "dynamodb:DescribeStream": {"MembershipsTable.StreamArn"},
        "dynamodb:GetRecords": {"MembershipsTable.StreamArn"},
        "dynamodb:GetShardIterator": {"MembershipsTable.StreamArn"},
        # the event stream
        **{action: {"EventStream.Arn"} for action in (
            "kinesis:DescribeStream", "kinesis:DescribeStreamConsumer", "kinesis:DescribeStreamSummary",
            "kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:ListStreams",
            "kinesis:SubscribeToShard")},
        # the destinations' queues, and its own on-failure queue
        "sqs:SendMessage": queues | {f"{ROUTER_DLQ}.Arn"},
        "sqs:GetQueueUrl": queues | {f"{ROUTER_DLQ}.Arn"},
        "sqs:GetQueueAttributes": {f"{ROUTER_DLQ}.Arn"},
    }
    assert not {arn for arns in grants.values() for arn in arns} & dead_letters


def test_router_environment_names_the_tables_and_the_queue_prefix(cdp_stack_activation: SynthesizedStack) -> None:
    variables = cdp_stack_activation.props(ROUTER)["Environment"]["Variables"]
    _assert_environment(variables, _shared_environment())
    assert resources.DESTINATION_ID_ENV not in variables  # the router serves every destination


def test_router_dlq_keeps_failed_batches_14_days(cdp_stack_activation: SynthesizedStack) -> None:
    props = cdp_stack_activation.props(ROUTER_DLQ)
    assert props["MessageRetentionPeriod"] == resources.DEAD_LETTER_RETENTION_S == 14 * 24 * 3600
    assert props["SqsManagedSseEnabled"] is True


# --- compliance ----------------------------------------------------------------------------

NAG_RULE = Match.string_like_regexp("AwsSolutions-.*")


def test_cdk_nag_reports_nothing_unsuppressed_with_destinations(cdp_stack_activation: SynthesizedStack) -> None:
    annotations = Annotations.from_stack(cdp_stack_activation.stack)
    assert [(e.id, e.entry.data) for e in annotations.find_error("*", NAG_RULE)] == []
    assert [(w.id, w.entry.data) for w in annotations.find_warning("*", NAG_RULE)] == []


def test_every_suppression_on_activation_resources_has_a_reason_and_names_its_wildcard(
    cdp_stack_activation: SynthesizedStack,
) -> None:
    default_ids = set(cdp_stack_activation.resources) - {
        lid for lid in cdp_stack_activation.resources
        if lid.startswith(("Activation", "Destination"))}
    found = 0
    for logical_id, resource in cdp_stack_activation.resources.items():
        if logical_id in default_ids:
            continue
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found += 1
            assert len(rule.get("reason", "").strip()) >= 40, f"{logical_id}: {rule['id']} needs a specific reason"
            if rule["id"] == "AwsSolutions-IAM5":
                assert rule.get("applies_to"), f"{logical_id}: a blanket IAM5 suppression"
    assert found
    assert not cdp_stack_activation.json.get("Metadata", {}).get("cdk_nag"), "no stack-wide suppressions"


def test_wildcards_in_destination_policies_are_only_xray_secret_suffixes_and_export_folders(
    cdp_stack_activation: SynthesizedStack,
) -> None:
    for destination in _destinations(cdp_stack_activation):
        grants = cdp_stack_activation.grants_of_role(cdp_stack_activation.role_of(_function_id(destination)))
        for action, arns in grants.items():
            for arn in arns:
                if "*" not in arn and "?" not in arn:
                    continue
                allowed = (
                    (arn == "*" and action.startswith("xray:"))
                    # Secrets Manager's random suffix, and nothing else wild in the name
                    or (":secret:" in arn and arn.endswith("-??????") and "*" not in arn)
                    # the destination's own folder of the export bucket
                    or (action.startswith("s3:") and arn.endswith(f"/{destination.id}/*") and arn.count("*") == 1)
                )
                assert allowed, (destination.id, action, arn)


def test_cfn_lint_finds_nothing_in_the_activation_template(cdp_stack_activation: SynthesizedStack) -> None:
    matches = lint(json.dumps(cdp_stack_activation.json),
                   config=ManualArgs(regions=["us-east-1", "eu-west-1"], ignore_checks=["W3005"]))
    assert [str(match) for match in matches] == []


# --- synth-time validation -------------------------------------------------------------------

def _create(context: dict[str, Any], tmp_path: Path, stack_name: str | None = None) -> Stack:
    """Build (not synthesize) the app with cdk.json's context and ``context``."""
    from infra.app import create_app
    from infra.stack import CdpStack

    full = {**json.loads((REPO_ROOT / "cdk.json").read_text())["context"], **context}
    if stack_name is None:
        return create_app(full, outdir=str(tmp_path))[1]
    return CdpStack(App(context=full, outdir=str(tmp_path)), stack_name)


WEBHOOK: dict[str, Any] = {"id": "hook", "name": "Hook", "type": "webhook", "audiences": ["vip"],
                           "settings": {"url": "https://hooks.example.com/cdp", "secret_name": "cdp/hook"}}
SIGNUP_TRIGGER = {"name": "signups", "event_type": "track", "event": "Signed Up"}


@pytest.mark.parametrize(("destinations", "sources"), [
    # triggers only (the audience destination is disabled): no mapping on the memberships
    # stream, which unfiltered would invoke the router for every membership change
    ([{**WEBHOOK, "audiences": [], "triggers": [SIGNUP_TRIGGER]}, {**WEBHOOK, "id": "off", "enabled": False}],
     {resources.EVENT_STREAM.logical_id}),
    # audiences only: no mapping on the event stream
    ([WEBHOOK], {resources.MEMBERSHIPS_TABLE.logical_id}),
    ([{**WEBHOOK, "triggers": [SIGNUP_TRIGGER]}], {resources.EVENT_STREAM.logical_id,
                                                   resources.MEMBERSHIPS_TABLE.logical_id}),
])
def test_router_reads_only_the_streams_its_destinations_need(
    tmp_path: Path, destinations: list[dict[str, Any]], sources: set[str],
) -> None:
    from aws_cdk import aws_lambda as lambda_

    stack = _create({"destinations": json.dumps(destinations)}, tmp_path)
    router = stack.resolve(stack.activation.router.function.function_name)  # type: ignore[attr-defined]
    found = {stack.resolve(c.event_source_arn)["Fn::GetAtt"][0] for c in stack.node.find_all()
             if isinstance(c, lambda_.CfnEventSourceMapping) and stack.resolve(c.function_name) == router}
    assert found == sources


@pytest.mark.parametrize(("destination", "message"), [
    ({**WEBHOOK, "id": "Bad Id"}, r"destinations\[0\] is invalid: id: String should match pattern"),
    ({**WEBHOOK, "settings": {"url": "http://example.com/x", "secret_name": "cdp/hook"}},
     r"destinations\[0\] \(id 'hook'\) is invalid: settings\.webhook\.url: must use https"),
    ({**WEBHOOK, "settings": {"url": "https://hooks.example.com/cdp"}},
     r"destination 'hook' \(webhook\) has no settings\.secret_name: webhook requests are always signed"),
    ({"id": "lake", "name": "Lake", "type": "s3", "settings": {"bucket": "acme-lake", "prefix": "exports/*"}},
     r"destination 'lake' \(s3\): settings\.prefix must not contain '\*' or '\?'"),
])
def test_invalid_destinations_fail_synthesis_naming_the_destination(
    tmp_path: Path, destination: dict[str, Any], message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        _create({"destinations": json.dumps([destination])}, tmp_path)


def test_a_pasted_secret_is_refused_without_being_echoed(tmp_path: Path) -> None:
    token = "xoxb-" + "1234567890-abcdefghijklmnopqrstuvwx"
    destination = {**WEBHOOK, "settings": {**WEBHOOK["settings"], "headers": {"X-Token": token}}}
    with pytest.raises(ValueError, match=r"destinations\[0\].*looks like a secret value") as raised:
        _create({"destinations": json.dumps([destination])}, tmp_path)
    assert token not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_destination_ids_that_would_share_a_construct_id_fail_synthesis(tmp_path: Path) -> None:
    destinations = [WEBHOOK, {**WEBHOOK, "id": "ho_ok"}, {**WEBHOOK, "id": "ho-ok"}]
    with pytest.raises(ValueError, match=r"destinations 'ho_ok' and 'ho-ok' differ only in '-' versus '_'"):
        _create({"destinations": json.dumps(destinations)}, tmp_path)


@pytest.mark.parametrize("order", [("hook", "hook-dlq"), ("hook-dlq", "hook")])
def test_a_destination_named_like_anothers_dead_letter_queue_fails_synthesis(
    tmp_path: Path, order: tuple[str, str],
) -> None:
    destinations = [{**WEBHOOK, "id": destination_id} for destination_id in order]
    with pytest.raises(ValueError, match=r"would both have a queue named <stack>-hook-dlq\.fifo: rename one"):
        _create({"destinations": json.dumps(destinations)}, tmp_path)


def test_repeated_destination_id_fails_synthesis(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"id 'hook' is used twice"):
        _create({"destinations": json.dumps([WEBHOOK, WEBHOOK])}, tmp_path)


def test_destinations_and_destinations_file_are_exclusive(tmp_path: Path) -> None:
    file = tmp_path / "destinations.json"
    file.write_text(json.dumps([WEBHOOK]), encoding="utf-8")
    with pytest.raises(ValueError, match="give destinations or destinations_file, not both"):
        _create({"destinations": json.dumps([WEBHOOK]), "destinations_file": str(file)}, tmp_path)


@pytest.mark.parametrize("form", ["list", "json", "file"])
def test_destinations_come_from_a_list_a_json_string_or_a_file(tmp_path: Path, form: str) -> None:
    from infra.settings import DeploymentSettings

    file = tmp_path / "destinations.json"
    file.write_text(json.dumps([WEBHOOK]), encoding="utf-8")
    contexts: dict[str, dict[str, Any]] = {
        "list": {"destinations": [WEBHOOK]},  # as cdk.json holds it
        "json": {"destinations": json.dumps([WEBHOOK])},  # as `-c destinations=...`
        "file": {"destinations_file": str(file)},
    }
    context = contexts[form]
    settings = DeploymentSettings.from_node(App(context=context).node)
    assert settings.destinations == (DestinationConfig.model_validate(WEBHOOK),)


def test_a_bad_destinations_file_fails_naming_the_destination(tmp_path: Path) -> None:
    from infra.settings import DeploymentSettings

    file = tmp_path / "destinations.json"
    file.write_text(json.dumps([WEBHOOK, {**WEBHOOK, "id": "slack", "type": "slack"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"destinations\[1\] \(id 'slack'\) is invalid: .*settings"):
        DeploymentSettings.from_node(App(context={"destinations_file": str(file)}).node)


def test_queue_names_over_80_characters_fail_synthesis(tmp_path: Path) -> None:
    long_id = "a" * 63  # CdpStack- + 63 + -dlq.fifo = 81
    with pytest.raises(ValueError, match=r"is over 80 characters: shorten the destination id or the stack name"):
        _create({"destinations": json.dumps([{**WEBHOOK, "id": long_id}])}, tmp_path)


def test_long_stack_names_count_toward_the_queue_name(tmp_path: Path) -> None:
    # The prefix keeps 40 characters of the stack name: 41 + 31 + 9 = 81.
    destination = {**WEBHOOK, "id": "b" * 31}
    with pytest.raises(ValueError, match=r"queue name 'S{40}-b{31}-dlq\.fifo' is over 80 characters"):
        _create({"destinations": json.dumps([destination])}, tmp_path, stack_name="S" * 60)


# --- secret ARNs (no synthesis: the grant alone) ---------------------------------------------

@pytest.mark.parametrize(("secret_name", "action", "resource"), [
    ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:cdp/hook",
     "secretsmanager:GetSecretValue", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cdp/hook*"),
    ("arn:aws:ssm:eu-west-1:123456789012:parameter/cdp/hook",
     "ssm:GetParameter", "arn:aws:ssm:eu-west-1:123456789012:parameter/cdp/hook"),
])
def test_secret_given_by_arn_is_granted_by_that_arn(secret_name: str, action: str, resource: str) -> None:
    from infra.constructs.activation import Activation

    stack = Stack(App(), "Grants")
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    destination = DestinationConfig.model_validate({**WEBHOOK, "settings": {**WEBHOOK["settings"],
                                                                              "secret_name": secret_name}})
    Activation._grant_secrets(stack, destination, role)  # type: ignore[arg-type]  # any construct in a stack
    template = SynthesizedStack(app=stack.node.root, stack=stack)  # type: ignore[arg-type]
    (policy,) = template.of_type("AWS::IAM::Policy").values()
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [
        {"Action": action, "Effect": "Allow", "Resource": resource}]
