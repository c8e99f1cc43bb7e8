"""Pipeline: event source mapping, DynamoDB tables, archive bucket and DLQ."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources

pytestmark = pytest.mark.infra

ESM = resources.STREAM_CONSUMER_ESM
# KinesisEventSourceSpec field -> (CloudFormation property, value it must have).
ESM_PROPERTIES: dict[str, tuple[str, Any]] = {
    "batch_size": ("BatchSize", ESM.batch_size),
    "max_batching_window_s": ("MaximumBatchingWindowInSeconds", ESM.max_batching_window_s),
    "bisect_batch_on_error": ("BisectBatchOnFunctionError", ESM.bisect_batch_on_error),
    "retry_attempts": ("MaximumRetryAttempts", ESM.retry_attempts),
    "max_record_age_s": ("MaximumRecordAgeInSeconds", ESM.max_record_age_s),
    "report_batch_item_failures": (
        "FunctionResponseTypes",
        ["ReportBatchItemFailures"] if ESM.report_batch_item_failures else None,
    ),
    "starting_position": ("StartingPosition", ESM.starting_position),
    "parallelization_factor": ("ParallelizationFactor", ESM.parallelization_factor),
}


def _esm(cdp_stack: SynthesizedStack) -> dict[str, Any]:
    mappings = [m for m in cdp_stack.of_type("AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"] == {"Ref": resources.STREAM_CONSUMER_FUNCTION.logical_id}]
    assert len(mappings) == 1
    return dict(mappings[0]["Properties"])


def test_every_esm_setting_of_resources_py_is_mapped() -> None:
    # A new field in KinesisEventSourceSpec must be wired into the construct and this test.
    assert {field.name for field in dataclasses.fields(ESM)} == set(ESM_PROPERTIES)


def test_event_source_mapping_is_exactly_stream_consumer_esm(cdp_stack: SynthesizedStack) -> None:
    props = _esm(cdp_stack)
    expected = {cfn: value for cfn, value in ESM_PROPERTIES.values() if value is not None}
    expected |= {
        "EventSourceArn": {"Fn::GetAtt": [resources.EVENT_STREAM.logical_id, "Arn"]},
        "FunctionName": {"Ref": resources.STREAM_CONSUMER_FUNCTION.logical_id},
        "DestinationConfig": {
            "OnFailure": {"Destination": {"Fn::GetAtt": [resources.STREAM_CONSUMER_DLQ.logical_id, "Arn"]}}
        },
    }
    props.pop("Tags", None)
    assert props == expected


# --- DynamoDB --------------------------------------------------------------------


def _key_schema(spec_partition: resources.Key, spec_sort: resources.Key | None) -> list[dict[str, str]]:
    schema = [{"AttributeName": spec_partition.name, "KeyType": "HASH"}]
    if spec_sort:
        schema.append({"AttributeName": spec_sort.name, "KeyType": "RANGE"})
    return schema


def _expected_table(spec: resources.TableSpec) -> dict[str, Any]:
    attributes: dict[str, str] = {}
    for key in (spec.partition_key, spec.sort_key):
        if key:
            attributes[key.name] = key.type
    for index in spec.indexes:
        for key in (index.partition_key, index.sort_key):
            if key:
                attributes[key.name] = key.type
    expected: dict[str, Any] = {
        "KeySchema": _key_schema(spec.partition_key, spec.sort_key),
        "Attributes": attributes,
        "TimeToLiveSpecification": (
            {"AttributeName": spec.ttl_attribute, "Enabled": True} if spec.ttl_attribute else None
        ),
        "StreamSpecification": {"StreamViewType": spec.stream} if spec.stream else None,
        "GlobalSecondaryIndexes": sorted(
            (
                {
                    "IndexName": index.name,
                    "KeySchema": _key_schema(index.partition_key, index.sort_key),
                    "Projection": {"ProjectionType": "ALL"},
                }
                for index in spec.indexes
            ),
            key=lambda gsi: gsi["IndexName"],
        )
        or None,
    }
    return expected


def _actual_table(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "KeySchema": props["KeySchema"],
        "Attributes": {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]},
        "TimeToLiveSpecification": props.get("TimeToLiveSpecification"),
        "StreamSpecification": props.get("StreamSpecification"),
        "GlobalSecondaryIndexes": sorted(
            props.get("GlobalSecondaryIndexes", []), key=lambda g: g["IndexName"]
        )
        or None,
    }


def test_template_tables_match_resources_tables_exactly(cdp_stack: SynthesizedStack) -> None:
    """With the local-stack test against resources.py, this proves cloud and local agree."""
    tables = cdp_stack.of_type("AWS::DynamoDB::Table")
    assert set(tables) == {spec.logical_id for spec in resources.TABLES}
    for spec in resources.TABLES:
        assert _actual_table(tables[spec.logical_id]["Properties"]) == _expected_table(spec), spec.logical_id


@pytest.mark.parametrize("spec", resources.TABLES, ids=lambda spec: spec.logical_id)
def test_table_is_on_demand_kms_encrypted_with_pitr_and_retained(
    cdp_stack: SynthesizedStack, spec: resources.TableSpec
) -> None:
    table = cdp_stack.resources[spec.logical_id]
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"] == {"SSEEnabled": True}  # AWS managed key (aws/dynamodb)
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert "ProvisionedThroughput" not in props
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"


def test_each_table_name_is_an_output(cdp_stack: SynthesizedStack) -> None:
    for spec in resources.TABLES:
        assert cdp_stack.output_target(f"{spec.logical_id}Name") == spec.logical_id


# --- S3 ----------------------------------------------------------------------------

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def _denies_insecure_transport(cdp_stack: SynthesizedStack, bucket_id: str) -> bool:
    for policy in cdp_stack.of_type("AWS::S3::BucketPolicy").values():
        if policy["Properties"]["Bucket"] != {"Ref": bucket_id}:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement["Effect"] == "Deny"
                and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                and statement["Action"] == "s3:*"
            ):
                return True
    return False


def _access_log_bucket(cdp_stack: SynthesizedStack) -> str:
    logging = cdp_stack.props(resources.ARCHIVE_BUCKET.logical_id)["LoggingConfiguration"]
    return cdp_stack.ref_target(logging["DestinationBucketName"])


def test_archive_bucket_is_encrypted_private_versioned_ssl_only_and_retained(
    cdp_stack: SynthesizedStack,
) -> None:
    bucket_id = resources.ARCHIVE_BUCKET.logical_id
    bucket = cdp_stack.resources[bucket_id]
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["DeletionPolicy"] == "Retain"
    assert _denies_insecure_transport(cdp_stack, bucket_id)


def test_archive_bucket_lifecycle_tiers_old_objects_and_cleans_up(cdp_stack: SynthesizedStack) -> None:
    (rule,) = cdp_stack.props(resources.ARCHIVE_BUCKET.logical_id)["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Transitions"] == [{"StorageClass": "INTELLIGENT_TIERING", "TransitionInDays": 90}]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "ExpirationInDays" not in rule  # the archive is kept for replay


def test_archive_access_is_logged_to_a_separate_private_encrypted_expiring_bucket(
    cdp_stack: SynthesizedStack,
) -> None:
    log_bucket_id = _access_log_bucket(cdp_stack)
    assert log_bucket_id != resources.ARCHIVE_BUCKET.logical_id
    log_bucket = cdp_stack.resources[log_bucket_id]
    props = log_bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"  # required for log delivery
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert _denies_insecure_transport(cdp_stack, log_bucket_id)
    (lifecycle,) = props["LifecycleConfiguration"]["Rules"]
    assert lifecycle["ExpirationInDays"] > 0
    assert log_bucket["DeletionPolicy"] == "Retain"
    # S3 log delivery may write only for this stack's buckets that log here (the archive, and
    # activation's sync snapshots), each under its own prefix, from this account.
    (policy,) = [p for p in cdp_stack.of_type("AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": log_bucket_id}]
    allows = [st for st in policy["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]
    assert allows and all(st["Action"] == "s3:PutObject" and st["Principal"] == {"Service": "logging.s3.amazonaws.com"}
                          and st["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
                          for st in allows)
    sources = {st["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::GetAtt"][0] for st in allows}
    assert sources == {resources.ARCHIVE_BUCKET.logical_id, resources.SYNC_SNAPSHOT_BUCKET.logical_id}


# --- SQS ---------------------------------------------------------------------------


def test_dlq_is_encrypted_ssl_only_and_keeps_messages_14_days(cdp_stack: SynthesizedStack) -> None:
    queue_id = resources.STREAM_CONSUMER_DLQ.logical_id
    props = cdp_stack.props(queue_id)
    assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props
    assert props["MessageRetentionPeriod"] == 14 * 24 * 3600
    cdp_stack.template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
            "PolicyDocument": {
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Action": "sqs:*",
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ]
            },
        },
    )
