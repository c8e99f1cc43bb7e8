"""Ingestion: HTTP API -> collector Lambda -> Kinesis, plus the sources and quarantine tables."""

from __future__ import annotations

import json
from pathlib import Path

import jsii
from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp import config, resources
from infra.constructs.function import CdpFunction
from infra.constructs.tables import build_table, grant_item_actions
from infra.settings import DeploymentSettings

# Access log line, one JSON object per request. No headers or bodies: write keys and
# event payloads must never reach the logs. No path either (analytics.js settings URLs
# carry the write key) and no source IP (personal data); the collector's metrics and
# logs say which route was used.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "httpMethod": "$context.httpMethod",
    "routeKey": "$context.routeKey",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "integrationError": "$context.integrationErrorMessage",
    "errorMessage": "$context.error.message",
}


class Ingestion(Construct):
    """The public edge of the CDP: accepts Segment-compatible calls and puts them on the stream."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        code_dir: Path,
        layer: lambda_.ILayerVersion,
    ) -> None:
        super().__init__(scope, construct_id)

        self.tables: dict[str, dynamodb.Table] = {
            spec.logical_id: build_table(self, spec)
            for spec in (resources.SOURCES_TABLE, resources.QUARANTINE_TABLE)
        }
        self.sources_table = self.tables[resources.SOURCES_TABLE.logical_id]
        self.quarantine_table = self.tables[resources.QUARANTINE_TABLE.logical_id]

        provisioned = settings.kinesis_capacity == "provisioned"
        self.stream = kinesis.Stream(
            self,
            resources.EVENT_STREAM.logical_id,
            # aws/kinesis key: encrypted at rest with no key to manage or pay for.
            encryption=kinesis.StreamEncryption.MANAGED,
            retention_period=Duration.hours(resources.EVENT_STREAM_RETENTION_HOURS),
            stream_mode=kinesis.StreamMode.PROVISIONED if provisioned else kinesis.StreamMode.ON_DEMAND,
            shard_count=settings.kinesis_shards if provisioned else None,
            # The stream holds events in flight; the archive bucket is the durable copy.
            removal_policy=RemovalPolicy.DESTROY,
        )
        cfn_stream = self.stream.node.default_child
        assert isinstance(cfn_stream, kinesis.CfnStream)
        cfn_stream.override_logical_id(resources.EVENT_STREAM.logical_id)

        spec = resources.COLLECTOR_FUNCTION
        self.collector = CdpFunction(
            self,
            "Collector",
            spec=spec,
            code_dir=code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.SOURCES_TABLE.env: self.sources_table.table_name,
                resources.EVENT_STREAM.env: self.stream.stream_name,
                config.ENV_VARS["source_cache_seconds"]: str(config.Settings().source_cache_seconds),
            },
        )
        # Least privilege: write keys are looked up by hash (GetItem), events are put
        # on the stream; nothing else.
        grant_item_actions(self.sources_table, self.collector.role, "dynamodb:GetItem")
        self.stream.grant(self.collector.role, "kinesis:PutRecord", "kinesis:PutRecords")

        self.http_api, self.stage, self.access_logs = self._http_api(settings)

    def _http_api(
        self, settings: DeploymentSettings
    ) -> tuple[apigwv2.HttpApi, apigwv2.HttpStage, logs.LogGroup]:
        # HTTP API rather than REST API: about 70% cheaper per request and lower latency,
        # and the collector does its own write-key auth, CORS (incl. preflight) and
        # validation, so REST's extra features would go unused. Trade-off: AWS WAF cannot
        # be attached to an HTTP API (put CloudFront + WAF in front if that is needed).
        # No cors_preflight here: the collector answers CORS itself, the same code path
        # locally and in the cloud.
        http_api = apigwv2.HttpApi(
            self,
            "HttpApi",
            description="CDP collector: Segment-compatible tracking API",
            create_default_stage=False,
        )
        route = apigwv2.HttpRoute(
            self,
            "DefaultRoute",
            http_api=http_api,
            route_key=apigwv2.HttpRouteKey.DEFAULT,
            integration=integrations.HttpLambdaIntegration(
                "CollectorIntegration",
                self.collector.function,
                payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0,
            ),
        )
        NagSuppressions.add_resource_suppressions(
            route,
            [
                {
                    "id": "AwsSolutions-APIG4",
                    "reason": "Segment-compatible clients authenticate with a source write key (HTTP Basic "
                    "or in the body), which the collector verifies against the hashed keys in the "
                    "sources table; an API Gateway authorizer cannot read keys sent in the body.",
                }
            ],
            apply_to_children=True,
        )

        access_logs = logs.LogGroup(
            self, "ApiAccessLogs", retention=settings.log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        stage = http_api.add_stage(
            "DefaultStage",
            stage_name="$default",
            auto_deploy=True,
            # Caps what a misbehaving client can cost before the collector even runs.
            throttle=apigwv2.ThrottleSettings(
                rate_limit=settings.api_throttle_rate, burst_limit=settings.api_throttle_burst
            ),
            access_log_settings=_AccessLogSettings(access_logs),
        )
        return http_api, stage, access_logs

    @property
    def api_url(self) -> str:
        return self.stage.url


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """JSON access logs into a log group (apigwv2 takes an interface, not a struct)."""

    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(log_group)

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FORMAT, separators=(",", ":")))
