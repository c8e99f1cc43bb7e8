"""DynamoDB tables built from ``cdp.resources.TableSpec``, and item-level grants on them."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdp.resources import Key, TableSpec

ATTRIBUTE_TYPES: dict[str, dynamodb.AttributeType] = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}


def _attribute(key: Key | None) -> dynamodb.Attribute | None:
    return None if key is None else dynamodb.Attribute(name=key.name, type=ATTRIBUTE_TYPES[key.type])


def build_table(scope: Construct, spec: TableSpec) -> dynamodb.Table:
    """On-demand, AWS-managed KMS encryption, PITR, TTL/stream/GSIs as the spec says, retained."""
    table = dynamodb.Table(
        scope,
        spec.logical_id,
        partition_key=_attribute(spec.partition_key),
        sort_key=_attribute(spec.sort_key),
        # Traffic follows customers' sites and apps: spiky and unknown in advance.
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        # Tables hold personal data: KMS (aws/dynamodb) so key use shows in CloudTrail.
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        time_to_live_attribute=spec.ttl_attribute,
        stream=dynamodb.StreamViewType[spec.stream] if spec.stream else None,
        # Data outlives the stack: deleting the stack must not delete customer data.
        removal_policy=RemovalPolicy.RETAIN,
    )
    for index in spec.indexes:
        table.add_global_secondary_index(
            index_name=index.name,
            partition_key=_attribute(index.partition_key),  # type: ignore[arg-type]
            sort_key=_attribute(index.sort_key),
            projection_type=dynamodb.ProjectionType.ALL,
        )
    # Stable logical id from resources.py: moving the construct must never replace a table.
    cfn_table = table.node.default_child
    assert isinstance(cfn_table, dynamodb.CfnTable)
    cfn_table.override_logical_id(spec.logical_id)
    return table


def grant_item_actions(table: dynamodb.ITable, grantee: iam.IGrantable, *actions: str) -> iam.Grant:
    """Grant item-level actions on the table itself only.

    ``Table.grant`` would add ``<table>/index/*`` whenever the table has a GSI; none of
    these actions read an index, so the policy names the table ARN alone.
    """
    return iam.Grant.add_to_principal(grantee=grantee, actions=list(actions), resource_arns=[table.table_arn])
