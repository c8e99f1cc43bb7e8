"""Activation: the delivery log, and for each configured destination its queue, its
dead-letter queue and its function, fed by the router (memberships-table stream and event
stream). Without destinations only the (empty, on-demand) delivery log table exists.

The destinations' configuration (names of secrets, never their values) is written beside
the handler in the router's and each destination function's code (``destinations.json``),
so a configuration change redeploys exactly those functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp import resources
from cdp.activation.destinations import DestinationConfig, destinations_document
from cdp.activation.filters import audience_filters, trigger_filters
from cdp.aws.destination_admin import destination_types_text
from cdp.aws.membership_store import MEMBERS_INDEX
from cdp.aws.secrets import is_ssm_parameter
from infra import packaging
from infra.constructs.event_sources import dynamo_event_source, kinesis_event_source
from infra.constructs.function import CdpFunction
from infra.constructs.queues import stream_dead_letter_queue
from infra.constructs.tables import build_table, grant_item_actions
from infra.settings import DeploymentSettings

# Profile reads (cdp.aws.activation_profiles): identifier and profile items only.
IDENTITY_ACTIONS = ("dynamodb:BatchGetItem",)
IDENTITY_KEYS = ["ident#*", "prof#*"]
# A profile's memberships (Query of the main key) and some of them (BatchGetItem).
MEMBERSHIP_ACTIONS = ("dynamodb:Query", "dynamodb:BatchGetItem")
def _queue_arn_of_url(url: str) -> str:
    """``https://sqs.<region>.amazonaws.com/<account>/<name>`` -> the queue's ARN."""
    parts = urlsplit(url)
    region = parts.hostname.split(".")[1] if parts.hostname and parts.hostname.startswith("sqs.") else "*"
    account, _, name = parts.path.strip("/").partition("/")
    return f"arn:aws:sqs:{region}:{account}:{name}"


class Activation(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        router_code_dir: Path,
        destination_code_dir: Path,
        sync_code_dir: Path,
        access_log_bucket: s3.IBucket,
        layer: lambda_.ILayerVersion,
        identity_table: dynamodb.ITable,
        events_table: dynamodb.ITable,
        memberships_table: dynamodb.ITable,
        segments_table: dynamodb.ITable,
        stream: kinesis.IStream,
    ) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, dynamodb.Table] = {
            resources.DELIVERY_LOG_TABLE.logical_id: build_table(self, resources.DELIVERY_LOG_TABLE)}
        self.delivery_log = self.tables[resources.DELIVERY_LOG_TABLE.logical_id]
        self.snapshot_bucket = self._snapshot_bucket(access_log_bucket)
        self._segments_table = segments_table
        self._memberships_table = memberships_table
        self.destinations = settings.destinations
        self.router: CdpFunction | None = None
        self.router_dlq: sqs.Queue | None = None
        self.queues: dict[str, sqs.Queue] = {}
        self.dead_letter_queues: dict[str, sqs.Queue] = {}
        self.functions: dict[str, CdpFunction] = {}
        self.sync_functions: dict[str, CdpFunction] = {}
        if not self.destinations:
            return

        stack = Stack.of(self)
        # Queue names: <stack name>-<destination id>: the router finds queues by name.
        self.queue_prefix = f"{stack.stack_name[:40]}-"
        document = {resources.DESTINATIONS_FILE: destinations_document(self.destinations)}
        self._tables = (identity_table, events_table, memberships_table)
        self._environment = {
            resources.IDENTITY_TABLE.env: identity_table.table_name,
            resources.EVENTS_TABLE.env: events_table.table_name,
            resources.MEMBERSHIPS_TABLE.env: memberships_table.table_name,
            resources.DELIVERY_LOG_TABLE.env: self.delivery_log.table_name,
            resources.DESTINATION_QUEUE_PREFIX_ENV: self.queue_prefix,
            resources.SEGMENTS_TABLE.env: segments_table.table_name,
            resources.SYNC_SNAPSHOT_BUCKET.env: self.snapshot_bucket.bucket_name,
        }
        destination_code = packaging.with_files(destination_code_dir, document)
        sync_code = packaging.with_files(sync_code_dir, document)
        for destination in self.destinations:
            self._destination(destination, destination_code, layer, settings)
            if destination.sync_schedule:
                self._sync(destination, sync_code, layer, settings)
        self._router(packaging.with_files(router_code_dir, document), layer, settings, memberships_table, stream)

    # --- the router ------------------------------------------------------------------

    def _router(self, code_dir: Path, layer: lambda_.ILayerVersion, settings: DeploymentSettings,
                memberships_table: dynamodb.ITable, stream: kinesis.IStream) -> None:
        self.router_dlq = stream_dead_letter_queue(self, resources.ACTIVATION_ROUTER_DLQ,
                                                   "the activation router's stream mappings")
        router = CdpFunction(self, "Router", spec=resources.ACTIVATION_ROUTER_FUNCTION, code_dir=code_dir,
                             layer=layer, log_retention=settings.log_retention, environment=self._environment)
        self.router = router
        self._grant_profile_reads(router.role)
        queue_arns = [q.queue_arn for q in self.queues.values()]
        iam.Grant.add_to_principal(grantee=router.role, actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                                   resource_arns=queue_arns)
        for queue in self.queues.values():
            if queue.encryption_master_key is not None:  # pragma: no cover - SQS-managed keys here
                queue.encryption_master_key.grant_encrypt(router.role)

        # Membership changes only when an enabled destination lists an audience: with none,
        # audience_filters() is empty, which on a mapping means every record, and every
        # membership change would invoke the router for nothing.
        if any(d.audiences for d in self.destinations if d.enabled):
            esm = resources.ACTIVATION_MEMBERSHIPS_ESM
            filters = audience_filters(self.destinations)
            # no filters: the audiences do not fit Lambda's filter limits, every record goes in
            router.function.add_event_source(dynamo_event_source(memberships_table, esm, self.router_dlq, filters))
        if any(d.triggers for d in self.destinations if d.enabled):
            kinesis_esm = resources.ACTIVATION_EVENTS_ESM
            router.function.add_event_source(kinesis_event_source(stream, kinesis_esm, self.router_dlq,
                                                                  trigger_filters(self.destinations)))
        NagSuppressions.add_resource_suppressions(router.role, [{
            "id": "AwsSolutions-IAM5",
            "reason": "The stream event source mappings need dynamodb:ListStreams and kinesis:ListShards-style "
            "actions that do not support resource-level permissions (resource '*'); records are read from the "
            "memberships table's stream and the event stream only.",
            "appliesTo": ["Resource::*"],
        }], apply_to_children=True)

    # --- one destination ---------------------------------------------------------------

    def _destination(self, destination: DestinationConfig, code_dir: Path, layer: lambda_.ILayerVersion,
                     settings: DeploymentSettings) -> None:
        logical = resources.destination_logical_id(destination.id)
        fifo = destination.type in resources.FIFO_DESTINATION_TYPES
        names = {dl: resources.destination_queue_name(self.queue_prefix, destination.id, destination.type, dl)
                 for dl in (False, True)}
        dead_letters = sqs.Queue(
            self, f"{logical}Dlq", queue_name=names[True], fifo=fifo or None,
            encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
            retention_period=Duration.seconds(resources.DEAD_LETTER_RETENTION_S))
        NagSuppressions.add_resource_suppressions(dead_letters, [{
            "id": "AwsSolutions-SQS3",
            "reason": f"This queue is itself the dead-letter queue of destination {destination.id}.",
        }])
        queue = sqs.Queue(
            self, f"{logical}Queue", queue_name=names[False], fifo=fifo or None,
            # FIFO: deduplication per message group, throughput per group (high-throughput FIFO)
            deduplication_scope=sqs.DeduplicationScope.MESSAGE_GROUP if fifo else None,
            fifo_throughput_limit=sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID if fifo else None,
            encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
            visibility_timeout=Duration.seconds(resources.DESTINATION_VISIBILITY_S),
            retention_period=Duration.seconds(resources.DESTINATION_RETENTION_S),
            # A safety net only: the function dead-letters messages itself, with their reason,
            # when the retry window ends; this catches a function that keeps crashing.
            dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letters, max_receive_count=1000),
        )
        self.queues[destination.id] = queue
        self.dead_letter_queues[destination.id] = dead_letters

        function = CdpFunction(
            self, logical,
            spec=resources.FunctionSpec(logical_id=f"{logical}Function", folder=resources.DESTINATION_FUNCTION.folder,
                                        memory_mb=resources.DESTINATION_FUNCTION.memory_mb,
                                        timeout_s=resources.DESTINATION_FUNCTION.timeout_s,
                                        purpose=f"Destination {destination.id} ({destination.type}): "
                                        + resources.DESTINATION_FUNCTION.purpose),
            code_dir=code_dir, layer=layer, log_retention=settings.log_retention,
            environment={**self._environment, resources.DESTINATION_ID_ENV: destination.id})
        self.functions[destination.id] = function
        role = function.role
        self._grant_profile_reads(role)
        grant_item_actions(self.delivery_log, role, "dynamodb:UpdateItem")
        # Its own queue: receive/delete (the mapping), visibility (retries), URL lookups.
        iam.Grant.add_to_principal(grantee=role, actions=["sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"],
                                   resource_arns=[queue.queue_arn])
        iam.Grant.add_to_principal(grantee=role, actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                                   resource_arns=[dead_letters.queue_arn])
        self._grant_secrets(destination, role)
        self._grant_target(destination, role)
        esm = resources.destination_esm(destination.type, destination.effective_batch_size)
        function.function.add_event_source(event_sources.SqsEventSource(
            queue, batch_size=esm.batch_size,
            max_batching_window=Duration.seconds(esm.max_batching_window_s) if esm.max_batching_window_s else None,
            report_batch_item_failures=esm.report_batch_item_failures,
            max_concurrency=destination.max_concurrency,
        ))

    def _grant_profile_reads(self, role: iam.IRole) -> None:
        identity_table, _, memberships_table = self._tables
        iam.Grant.add_to_principal(
            grantee=role, actions=list(IDENTITY_ACTIONS), resource_arns=[identity_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": IDENTITY_KEYS}})
        iam.Grant.add_to_principal(grantee=role, actions=list(MEMBERSHIP_ACTIONS),
                                   resource_arns=[memberships_table.table_arn])

    def _grant_secrets(self, destination: DestinationConfig, role: iam.IRole) -> None:
        stack = Stack.of(self)
        if destination.secrets_kms_key_arn:
            iam.Grant.add_to_principal(grantee=role, actions=["kms:Decrypt"],
                                       resource_arns=[destination.secrets_kms_key_arn])
        for name, value in destination.settings:
            if not name.endswith("secret_name") or not isinstance(value, str):
                continue
            if value.startswith("arn:"):
                arn = value if ":ssm:" in value else f"{value}*"  # a secret's ARN may omit its suffix
                actions = ["ssm:GetParameter"] if ":ssm:" in value else ["secretsmanager:GetSecretValue"]
            elif is_ssm_parameter(value):
                arn = stack.format_arn(service="ssm", resource="parameter", resource_name=value.lstrip("/"))
                actions = ["ssm:GetParameter"]
            else:
                # Secrets Manager appends "-" and 6 random characters to a secret's name.
                arn = stack.format_arn(service="secretsmanager", resource="secret", resource_name=f"{value}-??????",
                                       arn_format=ArnFormat.COLON_RESOURCE_NAME)
                actions = ["secretsmanager:GetSecretValue"]
            iam.Grant.add_to_principal(grantee=role, actions=actions, resource_arns=[arn])
            NagSuppressions.add_resource_suppressions(role, [{
                "id": "AwsSolutions-IAM5",
                "reason": "Secrets Manager appends a random 6-character suffix to a secret's ARN; the wildcard "
                "matches exactly that suffix of the one secret this destination is configured with.",
                "appliesTo": [{"regex": "/^Resource::arn:<AWS::Partition>:secretsmanager:.*-\\?\\?\\?\\?\\?\\?$/"},
                              {"regex": "/^Resource::arn:aws:secretsmanager:.*\\*$/"}],
            }], apply_to_children=True)

    def _grant_target(self, destination: DestinationConfig, role: iam.IRole) -> None:
        """What the destination's own API needs of AWS (its bus, queue or bucket only)."""
        settings = destination.settings
        stack = Stack.of(self)
        if settings.type == "eventbridge":
            bus = settings.event_bus
            arn = bus if bus.startswith("arn:") else stack.format_arn(service="events", resource="event-bus",
                                                                      resource_name=bus)
            iam.Grant.add_to_principal(grantee=role, actions=["events:PutEvents"], resource_arns=[arn])
        elif settings.type == "sqs":
            iam.Grant.add_to_principal(grantee=role, actions=["sqs:SendMessage"],
                                       resource_arns=[_queue_arn_of_url(settings.queue_url)])
            if settings.kms_key_arn:  # a queue encrypted with a customer-managed key
                iam.Grant.add_to_principal(grantee=role, actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                           resource_arns=[settings.kms_key_arn])
        elif settings.type == "s3":
            # Objects only, under the destination's own folder, keyed as cdp.activation.s3_export
            # keys them: "<prefix>/<destination id>/..." (a "/" added to a prefix without one).
            # IAM wildcards in a prefix are refused by the settings; stripped here as well.
            prefix = re.sub(r"[*?]", "", settings.prefix)
            folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
            iam.Grant.add_to_principal(
                grantee=role,
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resource_arns=[stack.format_arn(service="s3", region="", account="", resource=settings.bucket,
                                                resource_name=f"{folder}{destination.id}/*")])
            if settings.kms_key_arn:  # SSE-KMS with a customer-managed key (multipart uploads decrypt too)
                iam.Grant.add_to_principal(grantee=role, actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                           resource_arns=[settings.kms_key_arn])
            NagSuppressions.add_resource_suppressions(role, [{
                "id": "AwsSolutions-IAM5",
                "reason": "Export files are written under the destination's own prefix of the configured bucket "
                "(one object per batch, named by its content): the objects cannot be named in advance.",
                "appliesTo": [{"regex": "/^Resource::arn:<AWS::Partition>:s3:::.*/\\*$/"}],
            }], apply_to_children=True)

    def grant_status_reads(self, function: CdpFunction) -> None:
        """The admin API's destination pages: the delivery log, the queues' depths."""
        function.function.add_environment(resources.DELIVERY_LOG_TABLE.env, self.delivery_log.table_name)
        grant_item_actions(self.delivery_log, function.role, "dynamodb:Query")
        if not self.destinations:
            return
        function.function.add_environment("CDP_DESTINATION_TYPES", destination_types_text(self.destinations))
        function.function.add_environment(resources.DESTINATION_QUEUE_PREFIX_ENV, self.queue_prefix)
        queues = [*self.queues.values(), *self.dead_letter_queues.values()]
        iam.Grant.add_to_principal(grantee=function.role, actions=["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                                   resource_arns=[q.queue_arn for q in queues])

    # --- batch syncs ----------------------------------------------------------------------

    def _snapshot_bucket(self, access_log_bucket: s3.IBucket) -> s3.Bucket:
        """Batch syncs' snapshots: profile ids only (no traits), kept while syncs need them
        (each sync deletes all but the last two); encrypted, private, TLS only, logged."""
        bucket = s3.Bucket(
            self, resources.SYNC_SNAPSHOT_BUCKET.logical_id,
            encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_log_bucket, server_access_logs_prefix="sync-snapshots/",
            lifecycle_rules=[s3.LifecycleRule(id="abort-uploads",
                                              abort_incomplete_multipart_upload_after=Duration.days(7))],
            removal_policy=RemovalPolicy.RETAIN)
        cfn_bucket = bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.override_logical_id(resources.SYNC_SNAPSHOT_BUCKET.logical_id)
        return bucket

    def _sync(self, destination: DestinationConfig, code_dir: Path, layer: lambda_.ILayerVersion,
              settings: DeploymentSettings) -> None:
        """The destination's sync function (its role: the destination's), its schedule, and
        what a sync reads and writes: the audience's members (``members`` index), its state
        items (``sync#<destination>#...`` in the segments table), its snapshots."""
        logical = resources.destination_logical_id(destination.id)
        role = self.functions[destination.id].role
        assert isinstance(role, iam.Role)
        spec = resources.DESTINATION_SYNC_FUNCTION
        function = CdpFunction(
            self, f"{logical}Sync",
            spec=resources.FunctionSpec(logical_id=f"{logical}SyncFunction", folder=spec.folder,
                                        memory_mb=spec.memory_mb, timeout_s=spec.timeout_s,
                                        purpose=f"Destination {destination.id}: {spec.purpose}"),
            code_dir=code_dir, layer=layer, log_retention=settings.log_retention,
            environment={**self._environment, resources.DESTINATION_ID_ENV: destination.id}, role=role)
        self.sync_functions[destination.id] = function
        iam.Grant.add_to_principal(grantee=role, actions=["dynamodb:Query"],
                                   resource_arns=[f"{self._memberships_table.table_arn}/index/{MEMBERS_INDEX}"])
        iam.Grant.add_to_principal(
            grantee=role, actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            resource_arns=[self._segments_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"sync#{destination.id}#*"]}})
        prefix = f"snapshots/{destination.id}/"
        iam.Grant.add_to_principal(grantee=role, actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                                   resource_arns=[self.snapshot_bucket.arn_for_objects(f"{prefix}*")])
        iam.Grant.add_to_principal(grantee=role, actions=["s3:ListBucket"],
                                   resource_arns=[self.snapshot_bucket.bucket_arn],
                                   conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}})
        # A sync its deadline stops invokes the function again to continue (a separate
        # policy: the function itself depends on the role's default policy).
        iam.Policy(self, f"{logical}SyncContinue", roles=[role], statements=[iam.PolicyStatement(
            actions=["lambda:InvokeFunction"], resources=[function.function.function_arn])])
        rule = events.Rule(self, f"{logical}SyncSchedule",
                           description=f"Batch sync of destination {destination.id}"[:512],
                           schedule=events.Schedule.expression(str(destination.sync_schedule)))
        rule.add_target(targets.LambdaFunction(
            function.function, event=events.RuleTargetInput.from_object({"destination_id": destination.id}),
            retry_attempts=0))  # the next tick resumes from the checkpoint
        NagSuppressions.add_resource_suppressions(role, [{
            "id": "AwsSolutions-IAM5",
            "reason": "A destination's sync reads and writes the snapshot objects under its own prefix, and "
            "its state items whose keys start with sync#<destination>#: objects and items are named per "
            "sync, so they cannot be listed in advance.",
            "appliesTo": [{"regex": "/^Resource::<ActivationSyncSnapshotBucket.*\\.Arn>/snapshots/.*\\*$/"},
                          {"regex": "/^Resource::.*snapshots/.*\\*$/"}],
        }], apply_to_children=True)
