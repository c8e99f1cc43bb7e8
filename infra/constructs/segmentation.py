"""Segmentation: identity-table stream -> segment evaluator -> memberships table + audience events."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp import config, resources
from cdp.aws.membership_store import MEMBERS_INDEX
from infra.constructs.event_sources import dynamo_event_source
from infra.constructs.function import CdpFunction
from infra.constructs.queues import stream_dead_letter_queue
from infra.constructs.tables import build_table, grant_item_actions
from infra.settings import DeploymentSettings

# The memberships table (cdp.aws.membership_store): a consistent BatchGetItem of the few
# memberships a change touches (a Query of all of a profile's for new, merged-away and
# schedule-touched profiles), a batch's decisions written with BatchWriteItem. Listing an
# audience's members (the ``members`` index) is the admin and Profile APIs' business.
MEMBERSHIPS_ACTIONS = ("dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem")
# The catalog (cdp.segmentation.catalog.CatalogStore): one Scan of the segments table per
# cache period.
SEGMENTS_ACTIONS = ("dynamodb:Scan",)
# Account traits (cdp.aws.account_traits): BatchGetItem of ``acct#`` items; an account
# whose traits changed: its members' profile items (cdp.aws.profile_items, following
# merges) and a conditional UpdateItem that touches each (new version, ``check``).
IDENTITY_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:UpdateItem")
IDENTITY_KEYS = ["acct#*", "prof#*", "ident#*"]
# An account's members: Query of ``g#<group id>`` records (and ``p#`` profile records).
EVENTS_ACTIONS = ("dynamodb:Query",)
EVENTS_KEYS = ["p#*", "g#*"]
# What other functions read of the memberships table: a profile's memberships (the main
# key) and an audience's members (the ``members`` index).
MEMBERSHIP_READS = ("dynamodb:Query",)


class Segmentation(Construct):
    """The memberships table, the segment evaluator, its DLQ and its filtered stream mapping."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        code_dir: Path,
        layer: lambda_.ILayerVersion,
        identity_table: dynamodb.ITable,
        events_table: dynamodb.ITable,
        segments_table: dynamodb.ITable,
        stream: kinesis.IStream,
        stream_consumer: CdpFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, dynamodb.Table] = {
            resources.MEMBERSHIPS_TABLE.logical_id: build_table(self, resources.MEMBERSHIPS_TABLE)}
        self.memberships_table = self.tables[resources.MEMBERSHIPS_TABLE.logical_id]
        self.dlq = self._dead_letter_queue()
        cache_seconds = str(config.Settings().segments_cache_seconds)

        self.evaluator = CdpFunction(
            self,
            "SegmentEvaluator",
            spec=resources.SEGMENT_EVALUATOR_FUNCTION,
            code_dir=code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.MEMBERSHIPS_TABLE.env: self.memberships_table.table_name,
                resources.SEGMENTS_TABLE.env: segments_table.table_name,
                resources.IDENTITY_TABLE.env: identity_table.table_name,
                resources.EVENTS_TABLE.env: events_table.table_name,
                resources.EVENT_STREAM.env: stream.stream_name,
                config.ENV_VARS["segments_cache_seconds"]: cache_seconds,
            },
        )
        role = self.evaluator.role
        grant_item_actions(self.memberships_table, role, *MEMBERSHIPS_ACTIONS)
        grant_item_actions(segments_table, role, *SEGMENTS_ACTIONS)
        # Only account items, and only profile records: IAM checks each key's partition value.
        iam.Grant.add_to_principal(
            grantee=role, actions=list(IDENTITY_ACTIONS), resource_arns=[identity_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": IDENTITY_KEYS}})
        iam.Grant.add_to_principal(
            grantee=role, actions=list(EVENTS_ACTIONS), resource_arns=[events_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": EVENTS_KEYS}})
        # PutRecords only (stream.grant_write would add PutRecord and ListShards).
        iam.Grant.add_to_principal(grantee=role, actions=["kinesis:PutRecords"], resource_arns=[stream.stream_arn])

        # The stream consumer folds events into aggregate states of the specs the catalog
        # lists: it reads the segments table too.
        grant_item_actions(segments_table, stream_consumer.role, *SEGMENTS_ACTIONS)
        stream_consumer.function.add_environment(resources.SEGMENTS_TABLE.env, segments_table.table_name)
        stream_consumer.function.add_environment(config.ENV_VARS["segments_cache_seconds"], cache_seconds)

        # Every setting, and its reason, is in cdp.resources.SEGMENT_EVALUATOR_ESM; the
        # local stack's emulated mapping reads the same spec.
        esm = resources.SEGMENT_EVALUATOR_ESM
        self.event_source = dynamo_event_source(identity_table, esm, self.dlq)
        self.evaluator.function.add_event_source(self.event_source)
        NagSuppressions.add_resource_suppressions(
            role,
            [
                {
                    "id": "AwsSolutions-IAM5",
                    "reason": "The DynamoDB Streams event source mapping needs dynamodb:ListStreams, which does "
                    "not support resource-level permissions (resource must be '*'); reading records is granted "
                    "on the identity table's stream only. A test asserts '*' is used only by it and X-Ray.",
                    "appliesTo": ["Resource::*"],
                }
            ],
            apply_to_children=True,
        )

    def _dead_letter_queue(self) -> sqs.Queue:
        return stream_dead_letter_queue(self, resources.SEGMENT_EVALUATOR_DLQ, "the segment evaluator's stream mapping")

    def grant_membership_reads(self, *functions: CdpFunction) -> None:
        """Functions that read memberships (admin API members, Profile API audiences): the
        table's name in their environment and Query of the table and its ``members`` index."""
        for function in functions:
            function.function.add_environment(resources.MEMBERSHIPS_TABLE.env, self.memberships_table.table_name)
            iam.Grant.add_to_principal(
                grantee=function.role, actions=list(MEMBERSHIP_READS),
                resource_arns=[self.memberships_table.table_arn,
                               f"{self.memberships_table.table_arn}/index/{MEMBERS_INDEX}"])
