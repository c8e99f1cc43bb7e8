"""Monitoring (alarms, dashboard) and stack outputs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources

pytestmark = pytest.mark.infra

ALARM_TOPIC = "arn:aws:sns:eu-west-1:123456789012:cdp-alarms"  # NON_DEFAULT_CONTEXT in conftest


def _alarm(cdp_stack: SynthesizedStack, namespace: str, metric: str, dimension_target: str) -> dict[str, Any]:
    found = [
        alarm["Properties"]
        for alarm in cdp_stack.of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["Namespace"] == namespace
        and alarm["Properties"]["MetricName"] == metric
        and any(
            cdp_stack.ref_target(d["Value"]) == dimension_target for d in alarm["Properties"]["Dimensions"]
        )
    ]
    assert len(found) == 1, f"expected one {namespace} {metric} alarm on {dimension_target}"
    return found[0]


def test_consumer_iterator_age_alarm_fires_long_before_records_reach_max_age(
    cdp_stack: SynthesizedStack,
) -> None:
    alarm = _alarm(cdp_stack, "AWS/Lambda", "IteratorAge", resources.STREAM_CONSUMER_FUNCTION.logical_id)
    assert alarm["Statistic"] == "Maximum"
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert 0 < alarm["Threshold"] < resources.STREAM_CONSUMER_ESM.max_record_age_s * 1000


def test_dlq_alarm_fires_on_the_first_message(cdp_stack: SynthesizedStack) -> None:
    alarm = _alarm(
        cdp_stack, "AWS/SQS", "ApproximateNumberOfMessagesVisible", resources.STREAM_CONSUMER_DLQ.logical_id
    )
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == 0
    assert alarm["EvaluationPeriods"] == 1


def test_collector_5xx_and_error_alarms(cdp_stack: SynthesizedStack) -> None:
    (api_id,) = cdp_stack.of_type("AWS::ApiGatewayV2::Api")
    api_5xx = _alarm(cdp_stack, "AWS/ApiGateway", "5xx", api_id)
    assert api_5xx["Statistic"] == "Sum"
    errors = _alarm(cdp_stack, "AWS/Lambda", "Errors", resources.COLLECTOR_FUNCTION.logical_id)
    assert errors["Threshold"] == 0
    assert errors["ComparisonOperator"] == "GreaterThanThreshold"


def test_alarms_ignore_missing_data_and_have_no_actions_by_default(cdp_stack: SynthesizedStack) -> None:
    alarms = cdp_stack.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 4
    for alarm in alarms.values():
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching"
        assert "AlarmActions" not in alarm["Properties"]


def test_alarms_notify_the_topic_given_in_context(cdp_stack_non_default: SynthesizedStack) -> None:
    for alarm in cdp_stack_non_default.of_type("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [ALARM_TOPIC]
        assert alarm["Properties"]["OKActions"] == [ALARM_TOPIC]


def test_dashboard_exists_and_is_an_output(cdp_stack: SynthesizedStack) -> None:
    (dashboard_id,) = cdp_stack.of_type("AWS::CloudWatch::Dashboard")
    assert cdp_stack.output_target("DashboardName") == dashboard_id


def test_stack_outputs_name_the_resources_operators_need(cdp_stack: SynthesizedStack) -> None:
    outputs = cdp_stack.json["Outputs"]
    (api_id,) = cdp_stack.of_type("AWS::ApiGatewayV2::Api")
    assert {"Ref": api_id} in outputs["ApiUrl"]["Value"]["Fn::Join"][1]
    assert outputs["EventStreamName"]["Value"] == {"Ref": resources.EVENT_STREAM.logical_id}
    assert outputs["EventStreamArn"]["Value"] == {"Fn::GetAtt": [resources.EVENT_STREAM.logical_id, "Arn"]}
    assert outputs["ArchiveBucketName"]["Value"] == {"Ref": resources.ARCHIVE_BUCKET.logical_id}
    assert outputs["StreamConsumerDlqUrl"]["Value"] == {"Ref": resources.STREAM_CONSUMER_DLQ.logical_id}
    for spec in resources.TABLES:
        assert outputs[f"{spec.logical_id}Name"]["Value"] == {"Ref": spec.logical_id}


def test_dashboard_graphs_the_consumers_identity_metrics(cdp_stack: SynthesizedStack) -> None:
    (dashboard,) = cdp_stack.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("EventsStored", "ProfilesMerged", "MergesBlocked", "GraphRetries", "BatchConflicts"):
        assert metric in body, metric


def test_scheduled_segment_jobs_alarm_when_they_keep_failing(cdp_stack: SynthesizedStack) -> None:
    for function in (resources.SEGMENT_BACKFILL_FUNCTION, resources.SEGMENT_SCHEDULER_FUNCTION):
        alarm = _alarm(cdp_stack, "AWS/Lambda", "Errors", function.logical_id)
        assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (0, 3, 3)
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
