"""Admin API: a route of the HTTP API to a function that reads and writes the identity settings item."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdp import config, resources
from cdp.aws.identity_config_store import CONFIG_KEY
from infra.constructs.function import CdpFunction
from infra.constructs.profile_api import token_route
from infra.constructs.tables import build_table, grant_item_actions
from infra.settings import DeploymentSettings

# Token lookups by hash; on the identity table only the one settings item
# (cdp.aws.identity_config_store), enforced with dynamodb:LeadingKeys; the segments table's
# definitions (cdp.aws.definition_store: read, conditional put, delete, list by scan).
SOURCES_ACTIONS = ("dynamodb:GetItem",)
SETTINGS_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")
SEGMENTS_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Scan")
# Previews read a sample of profiles: Scan cannot be limited by key, so it is granted on
# the table (the items read are only evaluated, never returned beyond profile ids).
PREVIEW_IDENTITY_SCAN = ("dynamodb:Scan", "dynamodb:DescribeTable")


class AdminApi(Construct):
    """``ANY /v1/admin/{proxy+}`` on the existing HTTP API, answered by the admin function."""

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
    ) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, dynamodb.Table] = {
            resources.SEGMENTS_TABLE.logical_id: build_table(self, resources.SEGMENTS_TABLE)}
        segments_table = self.tables[resources.SEGMENTS_TABLE.logical_id]
        self.function = CdpFunction(
            self,
            "AdminApi",
            spec=resources.ADMIN_API_FUNCTION,
            code_dir=code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.SOURCES_TABLE.env: sources_table.table_name,
                resources.IDENTITY_TABLE.env: identity_table.table_name,
                resources.SEGMENTS_TABLE.env: segments_table.table_name,
                config.ENV_VARS["space_id"]: settings.space_id,
                # What DELETE goes back to, and what GET shows until an admin sets something.
                config.ENV_VARS["identity_config"]: settings.identity_config.model_dump_json(),
            },
        )
        role = self.function.role
        grant_item_actions(sources_table, role, *SOURCES_ACTIONS)
        grant_item_actions(segments_table, role, *SEGMENTS_ACTIONS)
        iam.Grant.add_to_principal(
            grantee=role,
            actions=list(SETTINGS_ACTIONS),
            resource_arns=[identity_table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [CONFIG_KEY]}},
        )

        self.identity_table = identity_table

        self.route = token_route(
            self,
            http_api,
            resources.ADMIN_API_ROUTE,
            self.function.function,
            "AdminApiIntegration",
            "Admin API clients authenticate with an access token of scope admin as the HTTP Basic username; the "
            "function checks it against the SHA-256 hashes in the sources table (space and scope) before "
            "reading or writing anything, the same code path as locally.",
        )

    def grant_previews(self, events_table: dynamodb.ITable) -> None:
        """Audience previews (cdp.aws.audience_preview): a sample Scan of the identity table
        (and its item count), BatchGetItem of account items, Query of history partitions."""
        role = self.function.role
        self.function.function.add_environment(resources.EVENTS_TABLE.env, events_table.table_name)
        iam.Grant.add_to_principal(grantee=role, actions=list(PREVIEW_IDENTITY_SCAN),
                                   resource_arns=[self.identity_table.table_arn])
        iam.Grant.add_to_principal(
            grantee=role, actions=["dynamodb:BatchGetItem"], resource_arns=[self.identity_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["acct#*"]}})
        iam.Grant.add_to_principal(
            grantee=role, actions=["dynamodb:Query"], resource_arns=[events_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["u#*", "a#*"]}})
