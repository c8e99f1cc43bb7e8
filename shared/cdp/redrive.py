"""Redrive: put the records behind the consumer's dead-letter messages back on the stream.

A Kinesis event source mapping's on-failure destination receives a pointer to the
failed batch (shard and sequence range), not the records. Redrive reads that range
from the stream (while it is still retained) and writes the records again; the
consumer's messageId dedupe makes a redrive of already-stored events harmless. Each
record written again carries ``redrive_of`` (the original record), which lets it take
over the dedupe claim its original may have left behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cdp.aws.event_stream import KinesisEventStream
from cdp.ingest import StreamRecord


class _DeadLetter(Protocol):
    @property
    def message_id(self) -> str: ...


Batch = TypeVar("Batch", bound=_DeadLetter)


@dataclass(frozen=True)
class FailedBatch:
    receipt_handle: str
    message_id: str
    shard_id: str
    start_sequence: str
    end_sequence: str
    batch_size: int
    condition: str
    stream_arn: str

    @classmethod
    def from_message(cls, message: dict[str, Any], info_key: str = "KinesisBatchInfo") -> FailedBatch:
        """A Kinesis mapping's on-failure message (``info_key`` ``DDBStreamBatchInfo``: a
        DynamoDB stream mapping's, which has the same fields)."""
        body = json.loads(message["Body"])
        info = body[info_key]
        return cls(
            receipt_handle=message["ReceiptHandle"],
            message_id=message["MessageId"],
            shard_id=info["shardId"],
            start_sequence=info["startSequenceNumber"],
            end_sequence=info["endSequenceNumber"],
            batch_size=int(info.get("batchSize", 0)),
            condition=body.get("requestContext", {}).get("condition", ""),
            stream_arn=info.get("streamArn", ""),
        )


def peek(sqs: Any, queue_url: str, max_messages: int = 100) -> list[FailedBatch]:
    """The Kinesis mapping's dead-letter messages, left on the queue (``peek_messages``)."""
    return peek_messages(sqs, queue_url, FailedBatch.from_message, max_messages)


def peek_messages(sqs: Any, queue_url: str, parse: Callable[[dict[str, Any]], Batch],
                  max_messages: int = 100) -> list[Batch]:
    """Dead-letter messages read with ``parse`` (one per message id), left on the queue and
    made visible again once all are read."""
    found: dict[str, Batch] = {}
    handles: list[str] = []
    for _ in range(max(1, max_messages // 10)):
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=30, WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            batch = parse(message)
            found.setdefault(batch.message_id, batch)
            handles.append(message["ReceiptHandle"])
    for handle in handles:  # a redrive right after a listing must see them
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=0)
    return list(found.values())


def with_redrive_of(data: bytes, owner: str) -> bytes:
    """Mark a record as the redrive of ``owner``, so its dedupe claim is honoured."""
    try:
        envelope = json.loads(data)
    except ValueError:
        return data  # not ours to change: the consumer quarantines it
    if not isinstance(envelope, dict):
        return data
    envelope.setdefault("redrive_of", owner)
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def read_range(kinesis: Any, stream_name: str, batch: FailedBatch) -> list[StreamRecord]:
    iterator = kinesis.get_shard_iterator(
        StreamName=stream_name, ShardId=batch.shard_id, ShardIteratorType="AT_SEQUENCE_NUMBER",
        StartingSequenceNumber=batch.start_sequence)["ShardIterator"]
    end = int(batch.end_sequence)
    records: list[StreamRecord] = []
    while iterator:
        page = kinesis.get_records(ShardIterator=iterator, Limit=1000)
        for record in page["Records"]:
            if int(record["SequenceNumber"]) > end:
                return records
            owner = f"{batch.shard_id}:{record['SequenceNumber']}"
            records.append(StreamRecord(record["PartitionKey"], with_redrive_of(record["Data"], owner)))
        if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
            break
        iterator = page.get("NextShardIterator")
    return records


def redrive(sqs: Any, kinesis: Any, queue_url: str, stream_name: str, max_batches: int = 1000) -> int:
    """Redrive every dead-lettered batch; returns the number of records written again."""
    writer = KinesisEventStream(kinesis, stream_name)
    total = 0
    for _ in range(max_batches):
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                       VisibilityTimeout=60, WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        if not messages:
            break
        batch = FailedBatch.from_message(messages[0])
        records = read_range(kinesis, stream_name, batch)
        writer.put_records(records)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=batch.receipt_handle)
        total += len(records)
    return total
