"""Profile API: a route of the HTTP API to a read-only function over the identity and events tables."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp import config, resources
from infra.constructs.function import CdpFunction
from infra.constructs.tables import grant_item_actions
from infra.settings import DeploymentSettings

# Read-only, and only the reads it makes (cdp.aws.profile_tables, cdp.access_tokens,
# cdp.aws.identity_config_store): tokens by hash; identifiers, profiles and accounts in
# batches plus the identity settings item; history, links and the merge log by query,
# and member records in batches. No Scan, no writes.
SOURCES_ACTIONS = ("dynamodb:GetItem",)
IDENTITY_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem")
EVENTS_ACTIONS = ("dynamodb:Query", "dynamodb:BatchGetItem")


def _route_key(spec: resources.HttpRouteSpec) -> apigwv2.HttpRouteKey:
    method, _, path = spec.route_key.partition(" ")
    return apigwv2.HttpRouteKey.with_(path, apigwv2.HttpMethod[method])


def token_route(scope: Construct, http_api: apigwv2.IHttpApi, spec: resources.HttpRouteSpec,
                function: lambda_.IFunction, integration_id: str, auth_reason: str) -> apigwv2.HttpRoute:
    """A route of the HTTP API to a function that authenticates its callers with access tokens."""
    route = apigwv2.HttpRoute(
        scope,
        "Route",
        http_api=http_api,
        route_key=_route_key(spec),
        integration=integrations.HttpLambdaIntegration(
            integration_id, function, payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0
        ),
    )
    NagSuppressions.add_resource_suppressions(
        route, [{"id": "AwsSolutions-APIG4", "reason": auth_reason}], apply_to_children=True
    )
    return route


class ProfileApi(Construct):
    """``GET /v1/spaces/{proxy+}`` on the existing HTTP API, answered by the profile function."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        code_dir: Path,
        layer: lambda_.ILayerVersion,
        http_api: apigwv2.IHttpApi,
        sources_table: dynamodb.ITable,
        identity_table: dynamodb.ITable,
        events_table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        defaults = config.Settings()
        self.function = CdpFunction(
            self,
            "ProfileApi",
            spec=resources.PROFILE_API_FUNCTION,
            code_dir=code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.SOURCES_TABLE.env: sources_table.table_name,
                resources.IDENTITY_TABLE.env: identity_table.table_name,
                resources.EVENTS_TABLE.env: events_table.table_name,
                config.ENV_VARS["space_id"]: settings.space_id,
                config.ENV_VARS["access_token_cache_seconds"]: str(defaults.access_token_cache_seconds),
                # Identifiers in paths are normalised as the consumer normalises them.
                config.ENV_VARS["identity_config"]: settings.identity_config.model_dump_json(),
            },
        )
        role = self.function.role
        grant_item_actions(sources_table, role, *SOURCES_ACTIONS)
        grant_item_actions(identity_table, role, *IDENTITY_ACTIONS)
        grant_item_actions(events_table, role, *EVENTS_ACTIONS)

        self.route = token_route(
            self,
            http_api,
            resources.PROFILE_API_ROUTE,
            self.function.function,
            "ProfileApiIntegration",
            "Profile API clients authenticate like Segment's, with an access token as the HTTP Basic username; "
            "the function checks it against the SHA-256 hashes in the sources table (and its space) before "
            "reading anything, the same code path as the local stack.",
        )

    def grant_segments(self, segments_table: dynamodb.ITable) -> None:
        """Computed traits: the catalog (one Scan of the segments table per cache period)."""
        self.function.function.add_environment(resources.SEGMENTS_TABLE.env, segments_table.table_name)
        grant_item_actions(segments_table, self.function.role, "dynamodb:Scan")
