"""Redrive of the segment evaluator's dead letters (``cdp dlq redrive --evaluator``) on moto:
the profiles of a failed batch are touched, and the evaluator decides them again through
the identity table's stream, against every audience."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from cdp import resources
from cdp.aws.evaluator_redrive import failed_stream_batch, named_by, redrive
from cdp.cli.deployment import Deployment
from cdp.cli.operate import peek_evaluator, redrive_evaluator
from cdp.segmentation.membership import Decision
from tests.integration.test_segment_evaluator import (
    PRO,
    IdentityStream,
    define,
    memberships,
    profile_item,
    put,
)

IDENTITY = resources.IDENTITY_TABLE.local_name


@pytest.fixture
def evaluator(aws: None) -> Any:
    from tests.conftest import load_handler

    return load_handler("segment_evaluator")


def test_redrive_re_evaluates_the_failed_batchs_profiles_and_records_exits_of_merged_ones(
        evaluator: Any, lambda_context: Any) -> None:
    define(PRO)
    stream = IdentityStream()
    store_writes = boto3.client("dynamodb")
    put(profile_item("p1", version=1, traits={"plan": "pro"}, ids=("ident#user_id:p1",)))
    put(profile_item("p2", version=1, traits={"plan": "pro"}, ids=("ident#user_id:p2",)))
    failed = stream.event()["Records"]  # the batch the evaluator gave up on
    assert len(failed) == 2
    # p2 was a member from an earlier decision, and has been merged away since.
    from cdp.aws.membership_store import MembershipStore

    MembershipStore(store_writes, resources.MEMBERSHIPS_TABLE.local_name).apply(
        "p2", [Decision("pro", True, "entered", 1, "2026-12-01T00:00:00.000Z")], {})
    put(profile_item("p2", version=2, traits={"plan": "pro"}, status="merged", merged_into="p1"))
    stream.event()  # (that change is not what this test is about)
    dead_letter_url = _send(failed, stream.arn)

    outcome = redrive_evaluator(Deployment(is_local=True))

    assert (outcome.batches, outcome.profiles_touched, outcome.profiles_gone, outcome.expired) == (1, 1, 1, [])
    assert memberships("p2") == {"pro": False}  # its exit recorded
    touched = stream.event()  # the touch: a new version of p1, with check "redrive"
    (record,) = touched["Records"]
    assert json.loads(record["dynamodb"]["NewImage"]["check"]["S"])["redrive"] is True
    assert evaluator.handler(touched, lambda_context) == {"batchItemFailures": []}
    assert memberships("p1") == {"pro": True}  # no trait changed: entered because every audience was decided
    messages = boto3.client("sqs").receive_message(QueueUrl=dead_letter_url).get("Messages", [])
    assert messages == []


def _send(records: list[dict[str, Any]], stream_arn: str) -> str:
    """The on-failure message the mapping sends for these records (AWS's shape)."""
    shard_id = _shard_of(stream_arn, records[0]["dynamodb"]["SequenceNumber"])
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=resources.SEGMENT_EVALUATOR_DLQ.local_name)["QueueUrl"]
    body = {"requestContext": {"condition": "RetryAttemptsExhausted"},
            "DDBStreamBatchInfo": {"shardId": shard_id, "streamArn": stream_arn, "batchSize": len(records),
                                   "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
                                   "endSequenceNumber": records[-1]["dynamodb"]["SequenceNumber"]}}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    return url


def _shard_of(stream_arn: str, sequence: str) -> str:
    from cdp.local.dynamodb_esm import dynamodb_streams_client

    shards = dynamodb_streams_client().describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    return str(shards[0]["ShardId"])


class TrimmedStream:
    """DynamoDB Streams after the 24 h retention (moto keeps every record, so it cannot say it)."""

    def get_shard_iterator(self, **request: Any) -> Any:
        raise ClientError({"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}},
                          "GetShardIterator")


def test_a_batch_the_stream_no_longer_holds_is_reported_and_left_on_the_queue(aws: None) -> None:
    stream = IdentityStream()
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=resources.SEGMENT_EVALUATOR_DLQ.local_name)["QueueUrl"]
    body = {"requestContext": {"condition": "RecordAgeExceeded"},
            "DDBStreamBatchInfo": {"shardId": "shardId-00000001700000000000-gone", "streamArn": stream.arn,
                                   "batchSize": 3, "startSequenceNumber": "100000000000000000100",
                                   "endSequenceNumber": "100000000000000000300"}}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    assert [b.batch_size for b in peek_evaluator(sqs, url)] == [3]  # listed, and left visible
    touched: list[str] = []

    outcome = redrive(sqs, TrimmedStream(), url, touch=lambda pid: touched.append(pid) is None,
                      touch_account=lambda gid: 0)

    assert outcome.batches == 0 and len(outcome.expired) == 1 and touched == []
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 1  # still on the queue


def test_records_name_their_profiles_and_accounts() -> None:
    records = [
        {"dynamodb": {"Keys": {"pk": {"S": "prof#p1"}}, "NewImage": {"pk": {"S": "prof#p1"}}}},
        {"dynamodb": {"Keys": {"pk": {"S": "ident#anonymous_id:a1"}},
                      "OldImage": {"solo": {"BOOL": True}, "profile_id": {"S": "h1"}}}},
        {"dynamodb": {"Keys": {"pk": {"S": "acct#g1"}}, "NewImage": {"group_id": {"S": "g1"}}}},
        {"dynamodb": {"Keys": {"pk": {"S": "ident#user_id:u1"}}, "NewImage": {"profile_id": {"S": "p1"}}}},
    ]
    named = named_by(records)
    assert named.profiles == {"p1", "h1"} and named.accounts == {"g1"}


def test_a_dead_letter_message_is_read_as_aws_writes_it() -> None:
    body = {"requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 4},
            "DDBStreamBatchInfo": {"shardId": "shardId-1", "startSequenceNumber": "10",
                                   "endSequenceNumber": "20", "batchSize": 2,
                                   "streamArn": "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"}}
    failed = failed_stream_batch({"Body": json.dumps(body), "ReceiptHandle": "h", "MessageId": "m"})
    assert (failed.shard_id, failed.start_sequence, failed.end_sequence, failed.batch_size, failed.condition) == \
        ("shardId-1", "10", "20", 2, "RetryAttemptsExhausted")
