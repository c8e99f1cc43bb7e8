"""Lambda functions: runtime, architecture, tracing, logs, environment, layer and least-privilege roles."""

from __future__ import annotations

import json

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources
from cdp.identity.config import IdentityConfig
from infra.settings import DeploymentSettings

pytestmark = pytest.mark.infra

COLLECTOR = resources.COLLECTOR_FUNCTION.logical_id
CONSUMER = resources.STREAM_CONSUMER_FUNCTION.logical_id
COMMON_ENV = {"POWERTOOLS_SERVICE_NAME": "cdp", "POWERTOOLS_METRICS_NAMESPACE": "CDP", "LOG_LEVEL": "INFO"}
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def test_template_has_exactly_the_functions_of_resources_py(cdp_stack: SynthesizedStack) -> None:
    assert set(cdp_stack.of_type("AWS::Lambda::Function")) == {
        spec.logical_id for spec in resources.FUNCTIONS
    }


@pytest.mark.parametrize("spec", resources.FUNCTIONS, ids=lambda spec: spec.logical_id)
def test_function_runs_python_313_on_arm64_with_active_tracing_and_spec_sizing(
    cdp_stack: SynthesizedStack, spec: resources.FunctionSpec
) -> None:
    props = cdp_stack.props(spec.logical_id)
    assert props["Runtime"] == "python3.13"
    assert props["Architectures"] == ["arm64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Handler"] == "handler.handler"
    assert props["MemorySize"] == spec.memory_mb
    assert props["Timeout"] == spec.timeout_s
    assert "ReservedConcurrentExecutions" not in props


def test_functions_share_one_dependency_layer_built_for_arm64_python_313(cdp_stack: SynthesizedStack) -> None:
    layers = cdp_stack.of_type("AWS::Lambda::LayerVersion")
    assert len(layers) == 1
    ((layer_id, layer),) = layers.items()
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    for spec in resources.FUNCTIONS:
        assert cdp_stack.props(spec.logical_id)["Layers"] == [{"Ref": layer_id}]


@pytest.mark.parametrize("spec", resources.FUNCTIONS, ids=lambda spec: spec.logical_id)
def test_function_logs_to_its_own_log_group_kept_30_days_by_default(
    cdp_stack: SynthesizedStack, spec: resources.FunctionSpec
) -> None:
    log_group = cdp_stack.ref_target(cdp_stack.props(spec.logical_id)["LoggingConfig"]["LogGroup"])
    assert cdp_stack.resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    assert cdp_stack.props(log_group)["RetentionInDays"] == 30
    others = {
        cdp_stack.ref_target(cdp_stack.props(other.logical_id)["LoggingConfig"]["LogGroup"])
        for other in resources.FUNCTIONS
        if other is not spec
    }
    assert log_group not in others


def test_every_log_group_follows_the_log_retention_days_context(
    cdp_stack_non_default: SynthesizedStack,
) -> None:
    log_groups = cdp_stack_non_default.of_type("AWS::Logs::LogGroup")
    assert len(log_groups) == len(resources.FUNCTIONS) + 1  # + the API access logs
    assert {group["Properties"]["RetentionInDays"] for group in log_groups.values()} == {90}


def test_collector_environment_names_exactly_the_resources_it_uses(cdp_stack: SynthesizedStack) -> None:
    env = cdp_stack.props(COLLECTOR)["Environment"]["Variables"]
    assert env == {
        **COMMON_ENV,
        resources.SOURCES_TABLE.env: {"Ref": resources.SOURCES_TABLE.logical_id},
        resources.EVENT_STREAM.env: {"Ref": resources.EVENT_STREAM.logical_id},
        "CDP_SOURCE_CACHE_SECONDS": "60",
    }


def test_consumer_environment_names_exactly_the_resources_it_uses(cdp_stack: SynthesizedStack) -> None:
    env = cdp_stack.props(CONSUMER)["Environment"]["Variables"]
    assert env == {
        **COMMON_ENV,
        resources.EVENTS_TABLE.env: {"Ref": resources.EVENTS_TABLE.logical_id},
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.QUARANTINE_TABLE.env: {"Ref": resources.QUARANTINE_TABLE.logical_id},
        resources.ARCHIVE_BUCKET.env: {"Ref": resources.ARCHIVE_BUCKET.logical_id},
        "CDP_EVENT_RETENTION_DAYS": "90",
        "CDP_QUARANTINE_RETENTION_DAYS": "30",
        "CDP_IDENTITY_CONFIG": IdentityConfig().model_dump_json(),
        # The catalog of aggregate specs to fold events into (granted by the Segmentation construct).
        resources.SEGMENTS_TABLE.env: {"Ref": resources.SEGMENTS_TABLE.logical_id},
        "CDP_SEGMENTS_CACHE_SECONDS": "60",
    }


def test_each_function_has_its_own_role_trusting_only_lambda_without_managed_policies(
    cdp_stack: SynthesizedStack,
) -> None:
    roles = {cdp_stack.role_of(spec.logical_id) for spec in resources.FUNCTIONS}
    assert len(roles) == len(resources.FUNCTIONS)
    for role in roles:
        props = cdp_stack.props(role)
        assert "ManagedPolicyArns" not in props
        (statement,) = props["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert statement["Action"] == "sts:AssumeRole"


def _log_group_arn(cdp_stack: SynthesizedStack, function_id: str) -> str:
    return cdp_stack.ref_target(cdp_stack.props(function_id)["LoggingConfig"]["LogGroup"]) + ".Arn"


def test_collector_may_only_read_sources_by_key_and_put_records(cdp_stack: SynthesizedStack) -> None:
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(COLLECTOR))
    log_group = _log_group_arn(cdp_stack, COLLECTOR)
    assert grants == {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {log_group},
        "logs:PutLogEvents": {log_group},
        "dynamodb:GetItem": {"SourcesTable.Arn"},
        "kinesis:PutRecord": {"EventStream.Arn"},
        "kinesis:PutRecords": {"EventStream.Arn"},
    }
    assert not any(action in grants for action in ("dynamodb:PutItem", "dynamodb:Scan", "dynamodb:Query"))


def test_consumer_may_only_use_events_quarantine_identity_archive_and_dlq(
    cdp_stack: SynthesizedStack,
) -> None:
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(CONSUMER))
    kinesis = {action: arns for action, arns in grants.items() if action.startswith("kinesis:")}
    others = {action: arns for action, arns in grants.items() if not action.startswith("kinesis:")}
    log_group = _log_group_arn(cdp_stack, CONSUMER)
    expected: dict[str, set[str]] = {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {log_group},
        "logs:PutLogEvents": {log_group},
        "s3:PutObject": {"ArchiveBucket.Arn/*"},
        "sqs:SendMessage": {"StreamConsumerDlq.Arn"},
        "sqs:GetQueueAttributes": {"StreamConsumerDlq.Arn"},
        "sqs:GetQueueUrl": {"StreamConsumerDlq.Arn"},
    }
    for action in ("dynamodb:PutItem", "dynamodb:BatchWriteItem"):
        expected[action] = {"EventsTable.Arn", "QuarantineTable.Arn"}
    # The history's dedupe check: a consistent BatchGetItem of the batch's keys.
    expected["dynamodb:BatchGetItem"] = {"EventsTable.Arn"}
    # The identity graph: batched reads, conditional puts/updates (in transactions too).
    for action in ("dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                   "dynamodb:ConditionCheckItem"):
        expected[action] = expected.get(action, set()) | {"IdentityTable.Arn"}
    # The catalog of definitions and aggregate specs (cdp.segmentation.catalog.CatalogStore).
    expected["dynamodb:Scan"] = {"SegmentsTable.Arn"}
    assert others == expected
    # Reading the stream is granted by the event source mapping, on this stream only.
    assert {"kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStream"} <= set(kinesis)
    assert all(arns == {"EventStream.Arn"} for arns in kinesis.values())
    forbidden = ("kinesis:Put", "s3:Get", "s3:Delete", "dynamodb:Query", "dynamodb:UpdateTable",
                 "dynamodb:DeleteTable")
    assert not any(action.startswith(forbidden) for action in grants)
    assert "dynamodb:DeleteItem" not in grants  # removals go through BatchWriteItem
    assert grants["dynamodb:UpdateItem"] == {"IdentityTable.Arn"}


@pytest.mark.parametrize("spec", resources.FUNCTIONS, ids=lambda spec: spec.logical_id)
def test_only_xray_actions_are_granted_on_any_resource(
    cdp_stack: SynthesizedStack, spec: resources.FunctionSpec
) -> None:
    # The cdk-nag IAM5 suppression for "Resource::*" relies on this.
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(spec.logical_id))
    # A DynamoDB Streams mapping needs dynamodb:ListStreams, which has no resource-level
    # permissions either (the Segmentation construct's suppression says so).
    allowed = XRAY | ({"dynamodb:ListStreams"} if spec is resources.SEGMENT_EVALUATOR_FUNCTION else set())
    assert {action for action, arns in grants.items() if "*" in arns} == allowed


def test_identity_settings_follow_context_and_are_validated_at_synth(
    cdp_stack_non_default: SynthesizedStack,
) -> None:
    env = cdp_stack_non_default.props(CONSUMER)["Environment"]["Variables"]
    deployed = IdentityConfig.model_validate_json(env["CDP_IDENTITY_CONFIG"])
    assert deployed.type_of("email").limit == 2 and deployed.default_phone_region == "PT"
    with pytest.raises(ValueError, match="limit"):
        DeploymentSettings.from_node(_Context({"identity_config": '{"types": [{"name": "email", "priority": 1, '
                                                                   '"limit": 0}]}'}))


class _Context:
    """A stand-in for a construct node's context lookups."""

    def __init__(self, values: dict[str, object]) -> None:
        self._values = values

    def try_get_context(self, key: str) -> object:
        return self._values.get(key)


def test_admin_api_may_write_only_the_identity_settings_item_and_definitions(cdp_stack: SynthesizedStack) -> None:
    role = cdp_stack.role_of(resources.ADMIN_API_FUNCTION.logical_id)
    statements = cdp_stack.statements_of_role(role)
    on_identity = [s for s in statements if "IdentityTable" in json.dumps(s.get("Resource"))]
    def actions(statement: dict[str, object]) -> set[str]:
        found = statement["Action"]
        return {found} if isinstance(found, str) else set(found)  # type: ignore[arg-type]

    writes = [s for s in on_identity if {"dynamodb:PutItem", "dynamodb:DeleteItem"} & actions(s)]
    (statement,) = writes
    assert set(statement["Action"]) == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    assert statement["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["config#identity"]}}
    # Previews read a sample of profiles and accounts, never write them.
    reads = {action for s in on_identity if s is not statement for action in actions(s)}
    assert reads == {"dynamodb:Scan", "dynamodb:DescribeTable", "dynamodb:BatchGetItem"}
    grants = cdp_stack.grants_of_role(role)
    assert grants["dynamodb:GetItem"] >= {"SourcesTable.Arn", "SegmentsTable.Arn"}
    assert grants["dynamodb:Scan"] == {"SegmentsTable.Arn", "IdentityTable.Arn"}
    # Queries: memberships (members, a profile's audiences), history partitions (previews),
    # the activation delivery log (destination status pages).
    assert grants["dynamodb:Query"] == {"MembershipsTable.Arn", "MembershipsTable.Arn/index/members",
                                        "EventsTable.Arn", "DeliveryLogTable.Arn"}
    assert not any(a in grants for a in ("dynamodb:BatchWriteItem", "dynamodb:UpdateItem"))
