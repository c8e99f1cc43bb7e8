"""Segmentation's scheduled jobs: the backfill and scheduler functions, their rules, roles and settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources

pytestmark = pytest.mark.infra

BACKFILL = resources.SEGMENT_BACKFILL_FUNCTION.logical_id
SCHEDULER = resources.SEGMENT_SCHEDULER_FUNCTION.logical_id
COMMON = {"POWERTOOLS_SERVICE_NAME": "cdp", "POWERTOOLS_METRICS_NAMESPACE": "CDP", "LOG_LEVEL": "INFO"}


def _log_grants(cdp_stack: SynthesizedStack, function: str) -> dict[str, set[str]]:
    log_group = cdp_stack.ref_target(cdp_stack.props(function)["LoggingConfig"]["LogGroup"]) + ".Arn"
    return {"xray:PutTraceSegments": {"*"}, "xray:PutTelemetryRecords": {"*"},
            "logs:CreateLogStream": {log_group}, "logs:PutLogEvents": {log_group}}


def _conditions(cdp_stack: SynthesizedStack, function: str) -> dict[tuple[str, ...], Any]:
    """Actions of each conditioned statement -> its condition."""
    found = {}
    for statement in cdp_stack.statements_of_role(cdp_stack.role_of(function)):
        if statement.get("Condition"):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            found[tuple(sorted(actions))] = statement["Condition"]
    return found


@pytest.mark.parametrize("schedule", resources.SCHEDULES, ids=lambda s: s.logical_id)
def test_each_schedule_is_a_rule_invoking_its_function(cdp_stack: SynthesizedStack,
                                                       schedule: resources.ScheduleSpec) -> None:
    props = cdp_stack.props(schedule.logical_id)
    assert props["ScheduleExpression"] == schedule.expression
    assert props["State"] == "ENABLED"
    (target,) = props["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [schedule.function.logical_id, "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
    # EventBridge may invoke the function, from this rule only.
    permissions = [p["Properties"] for p in cdp_stack.of_type("AWS::Lambda::Permission").values()
                   if p["Properties"]["Principal"] == "events.amazonaws.com"
                   and p["Properties"]["FunctionName"] == {"Fn::GetAtt": [schedule.function.logical_id, "Arn"]}]
    assert [p["SourceArn"] for p in permissions] == [{"Fn::GetAtt": [schedule.logical_id, "Arn"]}]


def test_backfill_runs_every_5_minutes_and_the_scheduler_hourly() -> None:
    assert resources.SEGMENT_BACKFILL_SCHEDULE.expression == "rate(5 minutes)"
    assert resources.SEGMENT_SCHEDULER_SCHEDULE.expression == "cron(1 * * * ? *)"
    # The backfill's invocation ends before the next tick (its lease would turn the next away).
    assert resources.SEGMENT_BACKFILL_FUNCTION.timeout_s <= 5 * 60


@pytest.mark.parametrize("schedule", resources.SCHEDULES, ids=lambda s: s.logical_id)
def test_asynchronous_retries_follow_the_schedule_spec(cdp_stack: SynthesizedStack,
                                                       schedule: resources.ScheduleSpec) -> None:
    (config,) = [c["Properties"] for c in cdp_stack.of_type("AWS::Lambda::EventInvokeConfig").values()
                 if c["Properties"]["FunctionName"] == {"Ref": schedule.function.logical_id}]
    assert config["MaximumRetryAttempts"] == schedule.retry_attempts
    assert config["MaximumEventAgeInSeconds"] == 3600


def test_backfill_environment_names_exactly_the_resources_it_uses(cdp_stack: SynthesizedStack) -> None:
    assert cdp_stack.props(BACKFILL)["Environment"]["Variables"] == {
        **COMMON,
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.EVENTS_TABLE.env: {"Ref": resources.EVENTS_TABLE.logical_id},
        resources.SEGMENTS_TABLE.env: {"Ref": resources.SEGMENTS_TABLE.logical_id},
        "CDP_BACKFILL_SETTLE_SECONDS": "900",
    }


def test_scheduler_environment_names_exactly_the_resources_it_uses(cdp_stack: SynthesizedStack) -> None:
    assert cdp_stack.props(SCHEDULER)["Environment"]["Variables"] == {
        **COMMON,
        resources.MEMBERSHIPS_TABLE.env: {"Ref": resources.MEMBERSHIPS_TABLE.logical_id},
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.SEGMENTS_TABLE.env: {"Ref": resources.SEGMENTS_TABLE.logical_id},
    }


def test_backfill_has_least_privilege(cdp_stack: SynthesizedStack) -> None:
    assert cdp_stack.grants_of_role(cdp_stack.role_of(BACKFILL)) == {
        **_log_grants(cdp_stack, BACKFILL),
        "dynamodb:Scan": {"IdentityTable.Arn", "SegmentsTable.Arn", "EventsTable.Arn"},
        "dynamodb:GetItem": {"IdentityTable.Arn", "SegmentsTable.Arn"},
        "dynamodb:BatchGetItem": {"IdentityTable.Arn"},
        "dynamodb:UpdateItem": {"IdentityTable.Arn", "SegmentsTable.Arn"},
        "dynamodb:DescribeTable": {"EventsTable.Arn"},
        "dynamodb:PutItem": {"IdentityTable.Arn", "SegmentsTable.Arn"},
    }
    conditions = _conditions(cdp_stack, BACKFILL)
    assert conditions[("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["spec#*", "actspec#*", "backfill#*",
                                                             "audience-pass#*", "audience#*"]}}


def test_scheduler_has_least_privilege(cdp_stack: SynthesizedStack) -> None:
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(SCHEDULER))
    (due_index,) = grants.pop("dynamodb:Query")
    assert "MembershipsTable" in due_index and due_index.endswith("/index/due")
    assert grants == {
        **_log_grants(cdp_stack, SCHEDULER),
        "dynamodb:UpdateItem": {"IdentityTable.Arn"},
        "dynamodb:GetItem": {"SegmentsTable.Arn"},
        "dynamodb:PutItem": {"SegmentsTable.Arn"},
    }
    conditions = _conditions(cdp_stack, SCHEDULER)
    assert conditions[("dynamodb:UpdateItem",)] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["prof#*", "ident#*"]}}
    assert conditions[("dynamodb:GetItem", "dynamodb:PutItem")] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["schedule#due"]}}


def test_admin_api_can_read_backfill_progress(cdp_stack: SynthesizedStack) -> None:
    # GET /v1/admin/backfills lists the checkpoint items with a Scan of the segments table.
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(resources.ADMIN_API_FUNCTION.logical_id))
    assert "SegmentsTable.Arn" in grants["dynamodb:Scan"]


def test_rules_have_their_purpose_as_description(cdp_stack: SynthesizedStack) -> None:
    for schedule in resources.SCHEDULES:
        assert cdp_stack.props(schedule.logical_id)["Description"] == schedule.purpose
    assert json.dumps(cdp_stack.props(BACKFILL)["MemorySize"]) == "1024"
