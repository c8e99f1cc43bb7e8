"""Activation in the local stack: what ``infra.constructs.activation`` deploys, on moto.

For the configured destinations (the same ``DestinationConfig`` list a deployment's
settings hold):

* their queues and dead-letter queues (FIFO for per-message types, standard for batch
  APIs, with the deployed attributes), and the router's dead-letter queue;
* their secrets, when given (a Secrets Manager secret, or an SSM SecureString for names
  beginning with ``/``), so the functions read them as in AWS;
* the router function on the memberships table's stream (filtered to the destinations'
  audiences, as deployed) and, when a destination has triggers, on the event stream
  (filtered to the triggers' event types and names, as deployed);
* one destination function per destination (the same handler code, its own execution
  environments) on its queue, with the deployed batch size, window and concurrency;
* for a destination with a ``sync_schedule``, its sync function on a local schedule
  (every ``sync_period_s``; ``syncs[id].tick()`` runs one at once). A sync that reaches
  its invocation's deadline invokes itself through Lambda's API in AWS; locally that
  call is not emulated (the local timeout is 15 minutes: the demos never reach it).

The destinations are written to a JSON file whose path the functions read from
``CDP_DESTINATIONS_FILE`` (in AWS the file sits beside the handler).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdp import resources
from cdp.activation.destinations import DestinationConfig, destinations_document
from cdp.activation.filters import audience_filters, trigger_filters
from cdp.aws.secrets import is_ssm_parameter
from cdp.local.dynamodb_esm import DynamoDbEventSourceMapping, dynamodb_streams_client, latest_stream_arn
from cdp.local.functions import LocalFunction
from cdp.local.kinesis_esm import KinesisEventSourceMapping, SqsDestination
from cdp.local.schedules import LocalSchedule
from cdp.local.sqs_esm import SqsEventSourceMapping, SqsEventSourceSpec

log = logging.getLogger(__name__)


def queue_attributes(destination: DestinationConfig, dead_letter_arn: str | None) -> dict[str, str]:
    """The deployed queue's attributes (``infra.constructs.activation``)."""
    fifo = destination.type in resources.FIFO_DESTINATION_TYPES
    attributes: dict[str, str] = {}
    if dead_letter_arn is None:  # a dead-letter queue: SQS's default visibility, 14 days
        attributes["MessageRetentionPeriod"] = str(resources.DEAD_LETTER_RETENTION_S)
    else:
        attributes["VisibilityTimeout"] = str(resources.DESTINATION_VISIBILITY_S)
        attributes["MessageRetentionPeriod"] = str(resources.DESTINATION_RETENTION_S)
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 1000})
    if fifo:
        attributes["FifoQueue"] = "true"
        if dead_letter_arn is not None:
            attributes.update({"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"})
    return attributes


def store_secrets(session: Any, secrets: Mapping[str, str]) -> None:
    """Each secret where a destination function looks for it (created or updated)."""
    ssm, manager = session.client("ssm"), session.client("secretsmanager")
    for name, value in secrets.items():
        if is_ssm_parameter(name):
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
            continue
        try:
            manager.create_secret(Name=name, SecretString=value)
        except manager.exceptions.ResourceExistsException:
            manager.put_secret_value(SecretId=name, SecretString=value)


class LocalActivation:
    def __init__(self, session: Any, destinations: Sequence[DestinationConfig], *, destinations_file: Path,
                 functions_dir: str | Path | None = None, secrets: Mapping[str, str] | None = None,
                 retry_backoff_s: float = 0.5, poll_interval_s: float = 0.1,
                 prefix: str = resources.LOCAL_DESTINATION_QUEUE_PREFIX, sync_period_s: float = 300.0) -> None:
        self.destinations = list(destinations)
        self._session = session
        self._functions_dir = functions_dir
        self._secrets = dict(secrets or {})
        self._retry_backoff = retry_backoff_s
        self._poll_interval = poll_interval_s
        self.prefix = prefix
        self.destinations_file = destinations_file  # CDP_DESTINATIONS_FILE of the stack's environment
        destinations_file.write_text(destinations_document(self.destinations), encoding="utf-8")
        self.queue_urls: dict[str, str] = {}
        self.dead_letter_urls: dict[str, str] = {}
        self.router: LocalFunction | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.change_mapping: DynamoDbEventSourceMapping | None = None
        self.event_mapping: KinesisEventSourceMapping | None = None
        self.queue_mappings: dict[str, SqsEventSourceMapping] = {}
        # Batch syncs: the destinations with a sync_schedule, every sync_period_s locally
        # (whatever their expression; ``syncs[id].tick()`` runs one now).
        self._sync_period = sync_period_s
        self.syncs: dict[str, LocalSchedule] = {}

    # --- resources ------------------------------------------------------------------------

    def provision(self) -> None:
        sqs = self._session.client("sqs")
        self.router_dlq_url = str(sqs.create_queue(
            QueueName=resources.ACTIVATION_ROUTER_DLQ.local_name,
            Attributes={"MessageRetentionPeriod": str(resources.DEAD_LETTER_RETENTION_S)})["QueueUrl"])
        for destination in self.destinations:
            dlq_name = resources.destination_queue_name(self.prefix, destination.id, destination.type, True)
            dlq_url = str(sqs.create_queue(QueueName=dlq_name,
                                           Attributes=queue_attributes(destination, None))["QueueUrl"])
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            name = resources.destination_queue_name(self.prefix, destination.id, destination.type)
            self.queue_urls[destination.id] = str(sqs.create_queue(
                QueueName=name, Attributes=queue_attributes(destination, dlq_arn))["QueueUrl"])
            self.dead_letter_urls[destination.id] = dlq_url
        if self._secrets:
            store_secrets(self._session, self._secrets)

    # --- functions and mappings --------------------------------------------------------

    def start(self) -> None:
        if not self.destinations:
            return
        self.router = LocalFunction.from_spec(resources.ACTIVATION_ROUTER_FUNCTION, self._functions_dir)
        self.router.warm_up()
        on_failure = SqsDestination(self._session.client("sqs"), self.router_dlq_url)
        esm = resources.ACTIVATION_MEMBERSHIPS_ESM
        from cdp.local.stack import local_dynamodb_spec  # the stack's conversion of the deployed spec

        filters = tuple(audience_filters(tuple(self.destinations)))
        spec = dataclasses.replace(local_dynamodb_spec(esm), filter_patterns=filters)
        # As deployed: no mapping of the memberships stream when no enabled destination lists
        # an audience (an empty filter would mean every record).
        if any(d.audiences for d in self.destinations if d.enabled):
            self.change_mapping = DynamoDbEventSourceMapping(
                streams=dynamodb_streams_client(self._session),
                stream_arn=latest_stream_arn(self._session.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name),
                function=self.router, spec=spec, on_failure=on_failure,
                retry_backoff_s=self._retry_backoff, poll_interval_s=self._poll_interval)
            self.change_mapping.start()
        if any(d.triggers for d in self.destinations if d.enabled):
            # Filtered as deployed: only events of the triggers' types and names invoke the router.
            self.event_mapping = KinesisEventSourceMapping(
                kinesis=self._session.client("kinesis"), stream_name=resources.EVENT_STREAM.local_name,
                function=self.router, spec=resources.ACTIVATION_EVENTS_ESM, on_failure=on_failure,
                retry_backoff_s=self._retry_backoff, poll_interval_s=self._poll_interval,
                filter_patterns=trigger_filters(tuple(self.destinations)))
            self.event_mapping.start()
        sqs = self._session.client("sqs")
        for destination in self.destinations:
            function = LocalFunction.from_spec(resources.DESTINATION_FUNCTION, self._functions_dir,
                                               max_concurrency=destination.max_concurrency,
                                               name=f"cdp-destination-{destination.id}")
            function.warm_up()
            self.functions[destination.id] = function
            deployed = resources.destination_esm(destination.type, destination.effective_batch_size)
            mapping = SqsEventSourceMapping(
                sqs=sqs, queue_url=self.queue_urls[destination.id], function=function,
                spec=SqsEventSourceSpec(batch_size=deployed.batch_size,
                                        # locally a short window: tests and demos wait for it
                                        max_batching_window_s=min(deployed.max_batching_window_s, 1),
                                        report_batch_item_failures=deployed.report_batch_item_failures,
                                        max_concurrency=destination.max_concurrency),
                poll_interval_s=self._poll_interval)
            mapping.start()
            self.queue_mappings[destination.id] = mapping
            if destination.sync_schedule:
                sync_function = LocalFunction.from_spec(resources.DESTINATION_SYNC_FUNCTION, self._functions_dir,
                                                        max_concurrency=1,
                                                        name=f"cdp-destination-sync-{destination.id}")
                sync_function.warm_up()
                schedule = LocalSchedule(f"{resources.destination_logical_id(destination.id)}Sync", sync_function,
                                         self._sync_period, target_input={"destination_id": destination.id})
                schedule.start()
                self.syncs[destination.id] = schedule

    def stop(self) -> None:
        for schedule in self.syncs.values():
            schedule.stop()
        self.syncs.clear()
        for mapping in self.queue_mappings.values():
            mapping.stop()
        self.queue_mappings.clear()
        for stream_mapping in (self.event_mapping, self.change_mapping):
            if stream_mapping is not None:
                stream_mapping.stop()
        self.event_mapping = self.change_mapping = None

    def invocations(self) -> int:
        total = sum(m.stats.invocations for m in self.queue_mappings.values())
        for stream_mapping in (self.event_mapping, self.change_mapping):
            if stream_mapping is not None:
                total += stream_mapping.stats.invocations
        return total

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Every change and event routed, and every queue's deliverable messages delivered
        (messages waiting out a retry delay are not deliverable yet)."""
        deadline = time.monotonic() + timeout
        for stream_mapping in (self.event_mapping, self.change_mapping):
            if stream_mapping is not None and not stream_mapping.wait_idle(max(0.0, deadline - time.monotonic())):
                return False
        return all(m.wait_idle(max(0.0, deadline - time.monotonic())) for m in self.queue_mappings.values())
