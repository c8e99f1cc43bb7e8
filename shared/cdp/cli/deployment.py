"""Where the CLI's resources are: a deployed stack's outputs, or the local stack."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import boto3

from cdp import resources
from cdp.config import Settings

LOCAL_API_URL = "http://127.0.0.1:8080"
LOCAL_AWS_URL = "http://127.0.0.1:4566"

# CloudFormation output name -> attribute of Deployment.
OUTPUTS = {
    "ApiUrl": "api_url",
    "SourcesTableName": "sources_table",
    "EventsTableName": "events_table",
    "QuarantineTableName": "quarantine_table",
    "EventStreamName": "event_stream",
    "ArchiveBucketName": "archive_bucket",
    "StreamConsumerDlqUrl": "dlq_url",
    "SegmentEvaluatorDlqUrl": "evaluator_dlq_url",
    "IdentityTableName": "identity_table",
    "MembershipsTableName": "memberships_table",
    "SpaceId": "space_id",
    "DeliveryLogTableName": "delivery_log_table",
    "SegmentsTableName": "segments_table",
    "DestinationQueuePrefix": "destination_queue_prefix",
}


_LOCAL = Settings()  # the local names of every resource, from cdp.resources


@dataclass
class Deployment:
    api_url: str = LOCAL_API_URL
    sources_table: str = _LOCAL.sources_table
    events_table: str = _LOCAL.events_table
    quarantine_table: str = _LOCAL.quarantine_table
    event_stream: str = _LOCAL.event_stream
    archive_bucket: str = _LOCAL.archive_bucket
    dlq_url: str = ""
    evaluator_dlq_url: str = ""
    identity_table: str = _LOCAL.identity_table
    memberships_table: str = _LOCAL.memberships_table
    space_id: str = _LOCAL.space_id
    delivery_log_table: str = _LOCAL.delivery_log_table
    segments_table: str = _LOCAL.segments_table
    destination_queue_prefix: str = _LOCAL.destination_queue_prefix
    # The embedded local stack (fake credentials, the printed local access token).
    is_local: bool = False

    def client(self, service: str) -> Any:
        return boto3.client(service)  # type: ignore[call-overload]

    def table(self, name: str) -> Any:
        return boto3.resource("dynamodb").Table(name)

    def dlq(self) -> str:
        if self.dlq_url:
            return self.dlq_url
        url: str = self.client("sqs").get_queue_url(
            QueueName=resources.STREAM_CONSUMER_DLQ.local_name)["QueueUrl"]
        return url

    def evaluator_dlq(self) -> str:
        """The segment evaluator's dead-letter queue (pointers into the identity table's stream)."""
        if self.evaluator_dlq_url:
            return self.evaluator_dlq_url
        url: str = self.client("sqs").get_queue_url(
            QueueName=resources.SEGMENT_EVALUATOR_DLQ.local_name)["QueueUrl"]
        return url


def local_deployment(aws_url: str = LOCAL_AWS_URL, api_url: str = LOCAL_API_URL) -> Deployment:
    """The embedded local stack: moto on ``aws_url`` with fake credentials."""
    os.environ["AWS_ENDPOINT_URL"] = aws_url
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    return Deployment(api_url=api_url, is_local=True)


def stack_deployment(stack_name: str) -> Deployment:
    """Resource names from a deployed stack's CloudFormation outputs."""
    stacks = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    values = {attr: outputs[key] for key, attr in OUTPUTS.items() if key in outputs}
    return Deployment(**values)
