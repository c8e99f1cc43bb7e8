"""``CdpStack``: the whole CDP in one stack, composed of per-domain constructs."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdp import resources
from infra import packaging
from infra.constructs.activation import Activation
from infra.constructs.admin_api import AdminApi
from infra.constructs.function import ARCHITECTURE, RUNTIME
from infra.constructs.ingestion import Ingestion
from infra.constructs.monitoring import ActivationResources, Monitoring
from infra.constructs.pipeline import Pipeline
from infra.constructs.profile_api import ProfileApi
from infra.constructs.segment_jobs import SegmentJobs
from infra.constructs.segmentation import Segmentation
from infra.settings import DeploymentSettings


class CdpStack(Stack):
    """Ingestion (HTTP API, collector, stream), pipeline (consumer, tables, archive, DLQ), Profile API,
    admin API, segmentation (evaluator, memberships table, DLQ), segmentation's scheduled jobs (backfill,
    scheduler), monitoring.

    Environment-agnostic on purpose (no account/region, no lookups): ``cdk synth`` works
    without AWS credentials, and one template deploys to any account and region.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings | None = None,
        assets: packaging.LambdaAssets | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings or DeploymentSettings.from_node(self.node)
        assets = assets or packaging.build_assets(spec.folder for spec in (*resources.FUNCTIONS,
                                                                           *resources.ACTIVATION_FUNCTIONS))

        # One layer with the third-party runtime dependencies, shared by every function.
        self.dependencies_layer = lambda_.LayerVersion(
            self,
            "DependenciesLayer",
            description="CDP runtime dependencies ([project].dependencies of pyproject.toml)",
            code=lambda_.Code.from_asset(str(assets.layer_dir)),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
        )

        self.ingestion = Ingestion(
            self,
            "Ingestion",
            settings=self.settings,
            code_dir=assets.function_dirs[resources.COLLECTOR_FUNCTION.folder],
            layer=self.dependencies_layer,
        )
        self.pipeline = Pipeline(
            self,
            "Pipeline",
            settings=self.settings,
            stream=self.ingestion.stream,
            quarantine_table=self.ingestion.quarantine_table,
            code_dir=assets.function_dirs[resources.STREAM_CONSUMER_FUNCTION.folder],
            layer=self.dependencies_layer,
        )
        self.profile_api = ProfileApi(
            self,
            "ProfileApi",
            settings=self.settings,
            code_dir=assets.function_dirs[resources.PROFILE_API_FUNCTION.folder],
            layer=self.dependencies_layer,
            http_api=self.ingestion.http_api,
            sources_table=self.ingestion.sources_table,
            identity_table=self.pipeline.tables[resources.IDENTITY_TABLE.logical_id],
            events_table=self.pipeline.events_table,
        )
        self.admin_api = AdminApi(
            self,
            "AdminApi",
            settings=self.settings,
            code_dir=assets.function_dirs[resources.ADMIN_API_FUNCTION.folder],
            layer=self.dependencies_layer,
            http_api=self.ingestion.http_api,
            sources_table=self.ingestion.sources_table,
            identity_table=self.pipeline.tables[resources.IDENTITY_TABLE.logical_id],
        )
        self.segmentation = Segmentation(
            self,
            "Segmentation",
            settings=self.settings,
            code_dir=assets.function_dirs[resources.SEGMENT_EVALUATOR_FUNCTION.folder],
            layer=self.dependencies_layer,
            identity_table=self.pipeline.identity_table,
            events_table=self.pipeline.events_table,
            segments_table=self.admin_api.tables[resources.SEGMENTS_TABLE.logical_id],
            stream=self.ingestion.stream,
            stream_consumer=self.pipeline.consumer,
        )
        # What the admin API and the Profile API read of segmentation.
        self.admin_api.grant_previews(self.pipeline.events_table)
        self.profile_api.grant_segments(self.admin_api.tables[resources.SEGMENTS_TABLE.logical_id])
        self.segmentation.grant_membership_reads(self.admin_api.function, self.profile_api.function)
        self.segment_jobs = SegmentJobs(
            self,
            "SegmentJobs",
            settings=self.settings,
            backfill_code_dir=assets.function_dirs[resources.SEGMENT_BACKFILL_FUNCTION.folder],
            scheduler_code_dir=assets.function_dirs[resources.SEGMENT_SCHEDULER_FUNCTION.folder],
            layer=self.dependencies_layer,
            identity_table=self.pipeline.identity_table,
            events_table=self.pipeline.events_table,
            segments_table=self.admin_api.tables[resources.SEGMENTS_TABLE.logical_id],
            memberships_table=self.segmentation.memberships_table,
        )
        self.activation = Activation(
            self,
            "Activation",
            settings=self.settings,
            router_code_dir=assets.function_dirs[resources.ACTIVATION_ROUTER_FUNCTION.folder],
            destination_code_dir=assets.function_dirs[resources.DESTINATION_FUNCTION.folder],
            sync_code_dir=assets.function_dirs[resources.DESTINATION_SYNC_FUNCTION.folder],
            access_log_bucket=self.pipeline.access_log_bucket,
            layer=self.dependencies_layer,
            identity_table=self.pipeline.identity_table,
            events_table=self.pipeline.events_table,
            memberships_table=self.segmentation.memberships_table,
            segments_table=self.admin_api.tables[resources.SEGMENTS_TABLE.logical_id],
            stream=self.ingestion.stream,
        )
        self.activation.grant_status_reads(self.admin_api.function)
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            http_api=self.ingestion.http_api,
            stream=self.ingestion.stream,
            collector=self.ingestion.collector.function,
            consumer=self.pipeline.consumer.function,
            dlq=self.pipeline.dlq,
            evaluator=self.segmentation.evaluator.function,
            evaluator_dlq=self.segmentation.dlq,
            jobs={"SegmentBackfill": self.segment_jobs.backfill.function,
                  "SegmentScheduler": self.segment_jobs.scheduler.function,
                  **{f"{resources.destination_logical_id(d)}Sync": f.function
                     for d, f in self.activation.sync_functions.items()}},
            activation=ActivationResources(
                router=self.activation.router.function if self.activation.router else None,
                router_dlq=self.activation.router_dlq,
                destinations={d: (f.function, self.activation.queues[d], self.activation.dead_letter_queues[d])
                              for d, f in self.activation.functions.items()}),
            alarm_topic_arn=self.settings.alarm_topic_arn,
        )

        self.tables: dict[str, dynamodb.Table] = {**self.ingestion.tables, **self.pipeline.tables,
                                                  **self.admin_api.tables, **self.segmentation.tables,
                                                  **self.activation.tables}
        missing = {spec.logical_id for spec in resources.TABLES} - set(self.tables)
        if missing:  # a table added to resources.py needs an owning construct
            raise ValueError(f"tables defined in cdp.resources but not built: {sorted(missing)}")

        self._outputs()

    def _outputs(self) -> None:
        CfnOutput(self, "ApiUrl", value=self.ingestion.api_url,
                  description="HTTP API: the collector, and the Profile API under /v1/spaces/<SpaceId>/")
        CfnOutput(self, "SpaceId", value=self.settings.space_id,
                  description="The Profile API's space; `cdp tokens create` binds tokens to it")
        stream = self.ingestion.stream
        CfnOutput(
            self, "EventStreamName", value=stream.stream_name, description=resources.EVENT_STREAM.purpose
        )
        CfnOutput(self, "EventStreamArn", value=stream.stream_arn)
        for spec in resources.TABLES:
            CfnOutput(
                self,
                f"{spec.logical_id}Name",
                value=self.tables[spec.logical_id].table_name,
                description=f"{spec.env}: {spec.purpose}",
            )
        CfnOutput(
            self,
            "ArchiveBucketName",
            value=self.pipeline.archive_bucket.bucket_name,
            description=resources.ARCHIVE_BUCKET.purpose,
        )
        CfnOutput(
            self,
            "StreamConsumerDlqUrl",
            value=self.pipeline.dlq.queue_url,
            description=resources.STREAM_CONSUMER_DLQ.purpose,
        )
        CfnOutput(
            self,
            "SegmentEvaluatorDlqUrl",
            value=self.segmentation.dlq.queue_url,
            description=resources.SEGMENT_EVALUATOR_DLQ.purpose,
        )
        if self.activation.destinations:
            CfnOutput(self, "DestinationQueuePrefix", value=self.activation.queue_prefix,
                      description="Destination queues are named <prefix><destination id>[-dlq][.fifo]")
        CfnOutput(self, "DashboardName", value=self.monitoring.dashboard.dashboard_name)
