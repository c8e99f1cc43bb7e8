"""Pipeline: Kinesis -> stream consumer Lambda -> events, identity and quarantine tables + S3 archive."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp import config, resources
from infra.constructs.event_sources import kinesis_event_source
from infra.constructs.function import CdpFunction
from infra.constructs.queues import stream_dead_letter_queue
from infra.constructs.tables import build_table, grant_item_actions
from infra.settings import DeploymentSettings

# Quarantine records are only ever written by the consumer.
WRITE_ACTIONS = ("dynamodb:PutItem", "dynamodb:BatchWriteItem")
# The events table (cdp.aws.event_store): consistent BatchGetItem of the batch's keys
# (the dedupe check), BatchWriteItem of new events and, after a failure, deletes of its
# own (BatchWriteItem too); the merge log is written inside the identity graph's
# TransactWriteItems (checked by IAM as PutItem). No Query, no Scan.
EVENTS_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:BatchWriteItem")
# The identity graph (cdp.aws.identity_graph): batched reads, conditional puts and
# updates inside TransactWriteItems (IAM checks each as PutItem/UpdateItem, plus
# ConditionCheckItem), single conditional updates of profile states, and GetItem of the
# identity settings an admin may have set (cdp.aws.identity_config_store). Nothing is deleted.
IDENTITY_ACTIONS = (
    "dynamodb:BatchGetItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:ConditionCheckItem",
)

# The archive is for replay: rarely read after the first weeks. Intelligent-Tiering
# rather than Glacier IR because archive objects are often < 128 KB, which Glacier IR
# bills as 128 KB, while Intelligent-Tiering just leaves them in the frequent tier.
ARCHIVE_TIERING_AFTER = Duration.days(90)
NONCURRENT_VERSION_EXPIRY = Duration.days(30)
ABORT_MULTIPART_AFTER = Duration.days(7)
ACCESS_LOG_EXPIRY = Duration.days(365)


class Pipeline(Construct):
    """Everything behind the stream: exactly-once-ish processing, storage and the DLQ."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        stream: kinesis.IStream,
        quarantine_table: dynamodb.ITable,
        code_dir: Path,
        layer: lambda_.ILayerVersion,
    ) -> None:
        super().__init__(scope, construct_id)

        self.tables: dict[str, dynamodb.Table] = {
            spec.logical_id: build_table(self, spec)
            for spec in (resources.EVENTS_TABLE, resources.IDENTITY_TABLE)
        }
        self.events_table = self.tables[resources.EVENTS_TABLE.logical_id]
        self.identity_table = self.tables[resources.IDENTITY_TABLE.logical_id]
        self.archive_bucket, self.access_log_bucket = self._archive()
        self.dlq = self._dead_letter_queue()

        settings_defaults = config.Settings()
        spec = resources.STREAM_CONSUMER_FUNCTION
        self.consumer = CdpFunction(
            self,
            "StreamConsumer",
            spec=spec,
            code_dir=code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.EVENTS_TABLE.env: self.events_table.table_name,
                resources.IDENTITY_TABLE.env: self.identity_table.table_name,
                resources.QUARANTINE_TABLE.env: quarantine_table.table_name,
                resources.ARCHIVE_BUCKET.env: self.archive_bucket.bucket_name,
                # Explicit so operators see the effective values in the console.
                config.ENV_VARS["event_retention_days"]: str(settings_defaults.event_retention_days),
                config.ENV_VARS["quarantine_retention_days"]: str(
                    settings_defaults.quarantine_retention_days
                ),
                # The deployment's identity resolution settings (CDK context
                # ``identity_config``); an admin may override them at run time.
                config.ENV_VARS["identity_config"]: settings.identity_config.model_dump_json(),
            },
        )
        role = self.consumer.role
        grant_item_actions(self.events_table, role, *EVENTS_ACTIONS)
        grant_item_actions(self.identity_table, role, *IDENTITY_ACTIONS)
        grant_item_actions(quarantine_table, role, *WRITE_ACTIONS)
        # PutObject only (bucket.grant_put would add s3:Abort* and object-lock/tagging actions).
        iam.Grant.add_to_principal(
            grantee=role, actions=["s3:PutObject"], resource_arns=[self.archive_bucket.arn_for_objects("*")]
        )
        NagSuppressions.add_resource_suppressions(
            role,
            [
                {
                    "id": "AwsSolutions-IAM5",
                    "reason": "The consumer writes archive objects under date-partitioned keys that are not "
                    "known in advance; the grant is s3:PutObject only, on this one bucket.",
                    "appliesTo": [f"Resource::<{resources.ARCHIVE_BUCKET.logical_id}.Arn>/*"],
                }
            ],
            apply_to_children=True,
        )

        # Every setting, and the reason for it, is in cdp.resources.STREAM_CONSUMER_ESM;
        # the local stack's poller reads the same spec.
        esm = resources.STREAM_CONSUMER_ESM
        self.event_source = kinesis_event_source(stream, esm, self.dlq)
        self.consumer.function.add_event_source(self.event_source)

    def _archive(self) -> tuple[s3.Bucket, s3.Bucket]:
        access_log_bucket = s3.Bucket(
            self,
            "ArchiveAccessLogs",
            # Server access logging delivers only to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=ACCESS_LOG_EXPIRY,
                    abort_incomplete_multipart_upload_after=ABORT_MULTIPART_AFTER,
                )
            ],
            # Who read the personal-data archive is audit evidence: keep it with the data.
            removal_policy=RemovalPolicy.RETAIN,
        )
        NagSuppressions.add_resource_suppressions(
            access_log_bucket,
            [
                {
                    "id": "AwsSolutions-S1",
                    "reason": "This is the server access log target of the archive bucket; logging it into "
                    "itself would loop and another log bucket would only move the problem.",
                }
            ],
        )

        archive_bucket = s3.Bucket(
            self,
            resources.ARCHIVE_BUCKET.logical_id,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # Versioning protects replay data against accidental overwrite or delete.
            versioned=True,
            server_access_logs_bucket=access_log_bucket,
            server_access_logs_prefix="archive/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="archive-tiering",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                            transition_after=ARCHIVE_TIERING_AFTER,
                        )
                    ],
                    noncurrent_version_expiration=NONCURRENT_VERSION_EXPIRY,
                    abort_incomplete_multipart_upload_after=ABORT_MULTIPART_AFTER,
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        cfn_bucket = archive_bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.override_logical_id(resources.ARCHIVE_BUCKET.logical_id)
        return archive_bucket, access_log_bucket

    def _dead_letter_queue(self) -> sqs.Queue:
        return stream_dead_letter_queue(self, resources.STREAM_CONSUMER_DLQ, "the stream consumer")
