"""Profile API: its route on the HTTP API, its function's environment and read-only grants, the space."""

from __future__ import annotations

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources
from cdp.identity.config import IdentityConfig

pytestmark = pytest.mark.infra

PROFILE_API = resources.PROFILE_API_FUNCTION.logical_id
COMMON_ENV = {"POWERTOOLS_SERVICE_NAME": "cdp", "POWERTOOLS_METRICS_NAMESPACE": "CDP", "LOG_LEVEL": "INFO"}


def _routes(cdp_stack: SynthesizedStack) -> dict[str, dict]:
    routes = cdp_stack.of_type("AWS::ApiGatewayV2::Route").values()
    return {r["Properties"]["RouteKey"]: r["Properties"] for r in routes}


def test_the_http_api_has_exactly_the_routes_of_resources_py_each_to_its_function(
    cdp_stack: SynthesizedStack,
) -> None:
    routes = _routes(cdp_stack)
    assert set(routes) == {route.route_key for route in resources.HTTP_ROUTES}
    for spec in resources.HTTP_ROUTES:
        integration = cdp_stack.props(cdp_stack.ref_target(routes[spec.route_key]["Target"]["Fn::Join"][1][1]))
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["PayloadFormatVersion"] == "2.0"
        assert integration["IntegrationUri"] == {"Fn::GetAtt": [spec.function.logical_id, "Arn"]}
        cdp_stack.template.has_resource_properties("AWS::Lambda::Permission", {
            "Action": "lambda:InvokeFunction", "Principal": "apigateway.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [spec.function.logical_id, "Arn"]}})
    # No API Gateway authorizer: the function checks the access token (hash lookup) itself.
    assert routes[resources.PROFILE_API_ROUTE.route_key].get("AuthorizationType", "NONE") == "NONE"


def test_profile_api_environment_names_its_tables_space_and_identity_settings(cdp_stack: SynthesizedStack) -> None:
    env = cdp_stack.props(PROFILE_API)["Environment"]["Variables"]
    assert env == {
        **COMMON_ENV,
        resources.SOURCES_TABLE.env: {"Ref": resources.SOURCES_TABLE.logical_id},
        resources.IDENTITY_TABLE.env: {"Ref": resources.IDENTITY_TABLE.logical_id},
        resources.EVENTS_TABLE.env: {"Ref": resources.EVENTS_TABLE.logical_id},
        resources.SEGMENTS_TABLE.env: {"Ref": resources.SEGMENTS_TABLE.logical_id},
        resources.MEMBERSHIPS_TABLE.env: {"Ref": resources.MEMBERSHIPS_TABLE.logical_id},
        "CDP_SPACE_ID": "default",
        "CDP_ACCESS_TOKEN_CACHE_SECONDS": "60",
        "CDP_IDENTITY_CONFIG": IdentityConfig().model_dump_json(),
    }


def test_profile_api_may_only_read_tokens_profiles_history_definitions_and_memberships(
        cdp_stack: SynthesizedStack) -> None:
    grants = cdp_stack.grants_of_role(cdp_stack.role_of(PROFILE_API))
    log_group = cdp_stack.ref_target(cdp_stack.props(PROFILE_API)["LoggingConfig"]["LogGroup"]) + ".Arn"
    assert grants == {
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
        "logs:CreateLogStream": {log_group},
        "logs:PutLogEvents": {log_group},
        "dynamodb:GetItem": {"SourcesTable.Arn", "IdentityTable.Arn"},
        "dynamodb:BatchGetItem": {"IdentityTable.Arn", "EventsTable.Arn"},
        "dynamodb:Query": {"EventsTable.Arn", "MembershipsTable.Arn", "MembershipsTable.Arn/index/members"},
        "dynamodb:Scan": {"SegmentsTable.Arn"},  # the catalog, for computed traits
    }


def test_the_space_comes_from_context_and_is_an_output(
    cdp_stack: SynthesizedStack, cdp_stack_non_default: SynthesizedStack
) -> None:
    assert cdp_stack.json["Outputs"]["SpaceId"]["Value"] == "default"
    assert cdp_stack_non_default.json["Outputs"]["SpaceId"]["Value"] == "shop-eu"
    assert cdp_stack_non_default.props(PROFILE_API)["Environment"]["Variables"]["CDP_SPACE_ID"] == "shop-eu"
