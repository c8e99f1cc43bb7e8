"""Redrive of the segment evaluator's dead letters: the profiles of a failed batch are
evaluated again, against every audience.

The identity table's stream mapping sends a failed batch's pointers to its on-failure
queue (``DDBStreamBatchInfo``: shard and sequence range), not the records. Replaying the
old records beside the live stream would decide from stale images out of order; instead,
redrive reads which items the range names (while the stream still holds them: 24 hours)
and touches each one's live profile (``cdp.aws.profile_items.ProfileItems.touch`` with
``check`` ``{"redrive": true}``): a new version of the profile item, which the stream
delivers to the evaluator in order like any change, and which the evaluator decides
against every audience from the profile as it is now. Memberships are a function of the
profile's state, so this converges to what the failed batch would have written (and to
anything after it). An account item in the range touches the account's members as an
account change does. A touch of a profile merged away since is skipped (its survivor's
changes were evaluated). Redriving a batch twice touches its profiles twice: harmless.

A batch whose records the stream no longer holds cannot name its profiles: it is left
on the queue and reported as expired; ``cdp audiences`` update of the audiences it may
concern (a new version) re-evaluates every profile for them (the audience pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from cdp.redrive import FailedBatch
from cdp.segmentation.membership import FULL_CHECK

REDRIVE_CHECK = FULL_CHECK  # the touch's check: decide every audience again
EXPIRED_ERRORS = {"TrimmedDataAccessException", "ExpiredIteratorException", "ResourceNotFoundException"}


# A DynamoDB stream mapping's on-failure message has the Kinesis one's fields.
FailedStreamBatch = FailedBatch


def failed_stream_batch(message: dict[str, Any]) -> FailedBatch:
    """One dead-letter message of the identity stream's mapping (``DDBStreamBatchInfo``)."""
    return FailedBatch.from_message(message, "DDBStreamBatchInfo")


@dataclass
class Named:
    """What a failed batch's records name: profile ids and account group ids."""

    profiles: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)


class StreamExpired(Exception):
    """The stream no longer holds the batch's records."""


def named_by(records: Iterable[dict[str, Any]]) -> Named:
    """The profiles and accounts that stream records (GetRecords' shape) are about."""
    found = Named()
    for record in records:
        data = record.get("dynamodb", {})
        key = data.get("Keys", {}).get("pk", {}).get("S", "")
        image = data.get("NewImage") or data.get("OldImage") or {}
        if key.startswith("prof#"):
            found.profiles.add(key.removeprefix("prof#"))
        elif key.startswith("acct#") and "group_id" in image:
            found.accounts.add(image["group_id"]["S"])
        elif key.startswith("ident#") and "solo" in image and "profile_id" in image:
            found.profiles.add(image["profile_id"]["S"])
    return found


def read_range(streams: Any, batch: FailedStreamBatch) -> list[dict[str, Any]]:
    """The batch's records, from its first sequence number to its last (``StreamExpired``
    when the stream has dropped them)."""
    end = int(batch.end_sequence)
    try:
        iterator = streams.get_shard_iterator(StreamArn=batch.stream_arn, ShardId=batch.shard_id,
                                              ShardIteratorType="AT_SEQUENCE_NUMBER",
                                              SequenceNumber=batch.start_sequence)["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page.get("Records", []):
                if int(record["dynamodb"]["SequenceNumber"]) > end:
                    return records
                records.append(record)
            if not page.get("Records"):
                return records  # the end of what the shard holds now
            iterator = page.get("NextShardIterator")
        return records
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in EXPIRED_ERRORS:
            raise StreamExpired(str(exc)) from exc
        raise


@dataclass
class RedriveOutcome:
    batches: int = 0
    profiles_touched: int = 0
    profiles_gone: int = 0  # merged away or deleted since: nothing to evaluate
    accounts: int = 0
    expired: list[str] = field(default_factory=list)  # message ids left on the queue


def redrive(sqs: Any, streams: Any, queue_url: str, touch: Callable[[str], bool],
            touch_account: Callable[[str], int], max_batches: int = 1000) -> RedriveOutcome:
    """Touch the profiles of every dead-lettered batch (see the module docstring); a batch's
    message is deleted once its profiles are touched. ``touch(profile_id)`` -> False if
    the profile is not live; ``touch_account(group_id)`` -> members touched."""
    outcome = RedriveOutcome()
    seen: set[str] = set()
    for _ in range(max_batches):
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, VisibilityTimeout=120,
                                       WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        if not messages:
            break
        batch = failed_stream_batch(messages[0])
        if batch.message_id in seen:
            break  # every message left has been looked at (the expired ones come round again)
        seen.add(batch.message_id)
        try:
            named = named_by(read_range(streams, batch))
        except StreamExpired:
            outcome.expired.append(batch.message_id)
            continue  # left on the queue (visible again after the timeout)
        for profile_id in sorted(named.profiles):
            if touch(profile_id):
                outcome.profiles_touched += 1
            else:
                outcome.profiles_gone += 1
        for group_id in sorted(named.accounts):
            outcome.profiles_touched += touch_account(group_id)
            outcome.accounts += 1
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=batch.receipt_handle)
        outcome.batches += 1
    return outcome
