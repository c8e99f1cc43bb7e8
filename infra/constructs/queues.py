"""Queues shared by the domain constructs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp.resources import QueueSpec


def stream_dead_letter_queue(scope: Construct, spec: QueueSpec, consumer: str) -> sqs.Queue:
    """The on-failure destination of a stream's event source mapping (``consumer`` names
    whose): it holds pointers (shard, sequence numbers) to batches that kept failing, for
    14 days, the SQS maximum, which gives operators the most time to look at them.
    Encrypted, TLS only, and its logical id is the spec's."""
    dlq = sqs.Queue(
        scope,
        spec.logical_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    cfn_queue = dlq.node.default_child
    assert isinstance(cfn_queue, sqs.CfnQueue)
    cfn_queue.override_logical_id(spec.logical_id)
    NagSuppressions.add_resource_suppressions(
        dlq,
        [
            {
                "id": "AwsSolutions-SQS3",
                "reason": f"This queue is itself the dead-letter (on-failure) destination of {consumer}; "
                "a DLQ of the DLQ would add nothing.",
            }
        ],
    )
    return dlq
