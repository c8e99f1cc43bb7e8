"""Segmentation's scheduled jobs: the backfill (every 5 minutes) and the segment scheduler (hourly).

Both are EventBridge rules invoking a function asynchronously; the schedules, and their
reasons, are in ``cdp.resources.SCHEDULES`` (the local stack runs the same functions on
shorter periods).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdp import config, resources
from cdp.aws.audience_pass import PASS_PREFIX
from cdp.aws.backfill_store import RUN_PREFIX
from cdp.aws.membership_store import DUE_INDEX
from cdp.aws.scheduled_reevaluation import CHECKPOINT_KEY
from cdp.segmentation.catalog import ACTIVITY_PREFIX, SPEC_PREFIX
from infra.constructs.function import CdpFunction
from infra.constructs.tables import grant_item_actions
from infra.settings import DeploymentSettings

# The backfill (cdp.aws.backfill_store): the holders of history partitions read with
# BatchGetItem (GetItem following merges), a conditional PutItem of each profile item
# and, for account activity specs, of each account item (``acct#``, read by BatchGetItem:
# ``DynamoIdentityGraph.apply_account_state``);
# the audience pass after it: a Scan of the identity table and a conditional UpdateItem
# (touch) per live profile.
BACKFILL_IDENTITY_ACTIONS = ("dynamodb:Scan", "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem",
                             "dynamodb:UpdateItem")
# A parallel Scan of the events table (the history, read once in large pages), and
# DescribeTable for the item count its progress is measured against. A Scan names no
# partition key, so it cannot be limited to the history's (``u#*``, ``a#*``): the
# function reads the other items too, and skips them.
BACKFILL_EVENTS_ACTIONS = ("dynamodb:Scan", "dynamodb:DescribeTable")
# The catalog and the run checkpoints are listed by Scan; item reads and writes only on
# spec items (``spec#``, ``actspec#``: ``backfill`` status) and checkpoint items (position,
# counts, lease).
BACKFILL_SEGMENTS_SCAN = ("dynamodb:Scan",)
BACKFILL_SEGMENTS_ITEM_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
# The audience pass (cdp.aws.audience_pass) after it: its checkpoint items and
# ``evaluated_version`` on audience items; the touches are identity UpdateItems.
BACKFILL_SEGMENTS_KEYS = [SPEC_PREFIX + "*", ACTIVITY_PREFIX + "*", RUN_PREFIX + "*", PASS_PREFIX + "*",
                          "audience#*"]

# The scheduler (cdp.aws.scheduled_reevaluation): Query of the ``due`` index, a
# conditional UpdateItem (``version``, ``checked_at``) of each due profile's item, and
# its one checkpoint item in the segments table.
SCHEDULER_MEMBERSHIPS_ACTIONS = ("dynamodb:Query",)
SCHEDULER_IDENTITY_ACTIONS = ("dynamodb:UpdateItem",)
SCHEDULER_PROFILE_KEYS = ["prof#*", "ident#*"]
SCHEDULER_SEGMENTS_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem")


class SegmentJobs(Construct):
    """The backfill and scheduler functions, their least-privilege roles and their EventBridge rules."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        backfill_code_dir: Path,
        scheduler_code_dir: Path,
        layer: lambda_.ILayerVersion,
        identity_table: dynamodb.ITable,
        events_table: dynamodb.ITable,
        segments_table: dynamodb.ITable,
        memberships_table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        self.backfill = CdpFunction(
            self,
            "SegmentBackfill",
            spec=resources.SEGMENT_BACKFILL_FUNCTION,
            code_dir=backfill_code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.IDENTITY_TABLE.env: identity_table.table_name,
                resources.EVENTS_TABLE.env: events_table.table_name,
                resources.SEGMENTS_TABLE.env: segments_table.table_name,
                config.ENV_VARS["backfill_settle_seconds"]: str(config.Settings().backfill_settle_seconds),
            },
        )
        role = self.backfill.role
        grant_item_actions(identity_table, role, *BACKFILL_IDENTITY_ACTIONS)
        grant_item_actions(segments_table, role, *BACKFILL_SEGMENTS_SCAN)
        grant_item_actions(events_table, role, *BACKFILL_EVENTS_ACTIONS)
        iam.Grant.add_to_principal(
            grantee=role, actions=list(BACKFILL_SEGMENTS_ITEM_ACTIONS), resource_arns=[segments_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": BACKFILL_SEGMENTS_KEYS}})

        self.scheduler = CdpFunction(
            self,
            "SegmentScheduler",
            spec=resources.SEGMENT_SCHEDULER_FUNCTION,
            code_dir=scheduler_code_dir,
            layer=layer,
            log_retention=settings.log_retention,
            environment={
                resources.MEMBERSHIPS_TABLE.env: memberships_table.table_name,
                resources.IDENTITY_TABLE.env: identity_table.table_name,
                resources.SEGMENTS_TABLE.env: segments_table.table_name,
            },
        )
        role = self.scheduler.role
        # The ``due`` index only (Table.grant would add the table and every index).
        iam.Grant.add_to_principal(
            grantee=role, actions=list(SCHEDULER_MEMBERSHIPS_ACTIONS),
            resource_arns=[f"{memberships_table.table_arn}/index/{DUE_INDEX}"])
        iam.Grant.add_to_principal(
            grantee=role, actions=list(SCHEDULER_IDENTITY_ACTIONS), resource_arns=[identity_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": SCHEDULER_PROFILE_KEYS}})
        iam.Grant.add_to_principal(
            grantee=role, actions=list(SCHEDULER_SEGMENTS_ACTIONS), resource_arns=[segments_table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [CHECKPOINT_KEY]}})

        self.rules: dict[str, events.Rule] = {}
        for spec, function in ((resources.SEGMENT_BACKFILL_SCHEDULE, self.backfill),
                               (resources.SEGMENT_SCHEDULER_SCHEDULE, self.scheduler)):
            self.rules[spec.logical_id] = self._schedule(spec, function)

    def _schedule(self, spec: resources.ScheduleSpec, function: CdpFunction) -> events.Rule:
        # Lambda's own retries of a failed run (the reasons are in the spec), within an
        # hour: an older event is of no use, a later tick has superseded it.
        function.function.configure_async_invoke(retry_attempts=spec.retry_attempts,
                                                 max_event_age=Duration.hours(1))
        rule = events.Rule(
            self,
            spec.logical_id,
            description=spec.purpose,
            schedule=events.Schedule.expression(spec.expression),
            # EventBridge retries only when it cannot deliver (throttling, the service);
            # a few times within the period is enough, the next tick comes anyway.
            targets=[targets.LambdaFunction(function.function, retry_attempts=2,
                                            max_event_age=Duration.minutes(5))],
        )
        cfn_rule = rule.node.default_child
        assert isinstance(cfn_rule, events.CfnRule)
        cfn_rule.override_logical_id(spec.logical_id)
        return rule
