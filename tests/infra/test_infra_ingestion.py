"""Ingestion: HTTP API ($default route, throttling, access logs) and the Kinesis stream."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App
from cdk_template_view import SynthesizedStack

from cdp import resources
from infra.settings import RETENTION_DAYS, DeploymentSettings

pytestmark = pytest.mark.infra


def _only(cdp_stack: SynthesizedStack, resource_type: str) -> tuple[str, dict]:
    found = cdp_stack.of_type(resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource["Properties"]


def test_api_is_an_http_api_without_cors_preflight(cdp_stack: SynthesizedStack) -> None:
    _, api = _only(cdp_stack, "AWS::ApiGatewayV2::Api")
    assert api["ProtocolType"] == "HTTP"
    # CORS, preflight included, is answered by the collector itself.
    assert "CorsConfiguration" not in api
    assert not cdp_stack.of_type("AWS::ApiGateway::RestApi")


def test_default_route_proxies_everything_to_the_collector_with_payload_v2(
    cdp_stack: SynthesizedStack,
) -> None:
    api_id, _ = _only(cdp_stack, "AWS::ApiGatewayV2::Api")
    routes = [r["Properties"] for r in cdp_stack.of_type("AWS::ApiGatewayV2::Route").values()]
    (route,) = [r for r in routes if r["RouteKey"] == "$default"]
    assert route["ApiId"] == {"Ref": api_id}
    integration_id = cdp_stack.ref_target(route["Target"]["Fn::Join"][1][1])
    integration = cdp_stack.props(integration_id)
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["PayloadFormatVersion"] == "2.0"
    assert integration["IntegrationUri"] == {"Fn::GetAtt": [resources.COLLECTOR_FUNCTION.logical_id, "Arn"]}
    cdp_stack.template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Action": "lambda:InvokeFunction",
            "Principal": "apigateway.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [resources.COLLECTOR_FUNCTION.logical_id, "Arn"]},
        },
    )


def test_default_stage_auto_deploys_with_default_throttling(cdp_stack: SynthesizedStack) -> None:
    _, stage = _only(cdp_stack, "AWS::ApiGatewayV2::Stage")
    assert stage["StageName"] == "$default"
    assert stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"] == {"ThrottlingRateLimit": 1000, "ThrottlingBurstLimit": 2000}


def test_throttling_follows_context(cdp_stack_non_default: SynthesizedStack) -> None:
    _, stage = _only(cdp_stack_non_default, "AWS::ApiGatewayV2::Stage")
    assert stage["DefaultRouteSettings"] == {"ThrottlingRateLimit": 50, "ThrottlingBurstLimit": 100}


def test_access_logs_are_json_lines_in_a_log_group_with_retention(cdp_stack: SynthesizedStack) -> None:
    _, stage = _only(cdp_stack, "AWS::ApiGatewayV2::Stage")
    settings = stage["AccessLogSettings"]
    log_group = cdp_stack.ref_target(settings["DestinationArn"])
    assert cdp_stack.resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    assert cdp_stack.props(log_group)["RetentionInDays"] == 30
    fields = json.loads(settings["Format"])
    assert {"requestId", "status", "routeKey", "integrationError"} <= set(fields)
    assert all(value.startswith("$context.") for value in fields.values())
    # Paths can carry a write key (analytics.js settings URL); IPs are personal data.
    logged = set(fields.values())
    assert not logged & {"$context.path", "$context.identity.sourceIp"}
    assert not any("header" in value.lower() for value in logged)


def test_stream_uses_aws_managed_encryption_and_retention_from_resources(cdp_stack: SynthesizedStack) -> None:
    stream = cdp_stack.props(resources.EVENT_STREAM.logical_id)
    assert cdp_stack.resources[resources.EVENT_STREAM.logical_id]["Type"] == "AWS::Kinesis::Stream"
    assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert stream["RetentionPeriodHours"] == resources.EVENT_STREAM_RETENTION_HOURS


def test_stream_is_on_demand_by_default(cdp_stack: SynthesizedStack) -> None:
    stream = cdp_stack.props(resources.EVENT_STREAM.logical_id)
    assert stream["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert "ShardCount" not in stream


def test_stream_is_provisioned_with_the_shard_count_from_context(
    cdp_stack_non_default: SynthesizedStack,
) -> None:
    stream = cdp_stack_non_default.props(resources.EVENT_STREAM.logical_id)
    assert stream["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    assert stream["ShardCount"] == 2
    assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}


def test_settings_default_to_what_cdk_json_ships() -> None:
    settings = DeploymentSettings.from_node(App().node)
    assert settings == DeploymentSettings(
        kinesis_capacity="on-demand",
        kinesis_shards=1,
        api_throttle_rate=1000,
        api_throttle_burst=2000,
        log_retention_days=30,
        alarm_topic_arn=None,
    )


@pytest.mark.parametrize(
    "context",
    [
        {"kinesis_capacity": "serverless"},
        {"kinesis_shards": "0"},
        {"api_throttle_rate": "0"},
        {"log_retention_days": "31"},
    ],
)
def test_invalid_settings_are_refused_at_synth(context: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        DeploymentSettings.from_node(App(context=context).node)


def test_every_retention_days_choice_maps_to_the_matching_cdk_enum() -> None:
    # The enum names spell the duration; a wrong row would deploy a different retention.
    words = {"DAY": 1, "DAYS": 1, "WEEK": 7, "WEEKS": 7, "MONTH": 30, "MONTHS": 30, "YEAR": 365, "YEARS": 365}
    numbers = {"ONE": 1, "TWO": 2, "THREE": 3, "FOUR": 4, "FIVE": 5, "SIX": 6, "SEVEN": 7, "EIGHT": 8,
               "NINE": 9, "TEN": 10, "THIRTEEN": 13, "EIGHTEEN": 18}  # fmt: skip
    for days, member in RETENTION_DAYS.items():
        count, unit = member.name.split("_")
        approximate = numbers[count] * words[unit]
        assert abs(days - approximate) <= numbers[count] * 2, (days, member.name)
