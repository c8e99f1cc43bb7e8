"""A destination function's parts, assembled from the deployment's settings: the
destination object (its secrets read by name), its queues, the profile reads and the
delivery log. Shared by the destination function (queue batches) and the destination
sync function (scheduled batch syncs), which run with the same role."""

from __future__ import annotations

from typing import Any

from cdp.activation.destinations import DestinationConfig, load_destinations_file
from cdp.activation.registry import RefreshingDestination, build_destination
from cdp.activation.worker import DestinationWorker
from cdp.aws.activation_profiles import ActivationProfiles
from cdp.aws.clients import client
from cdp.aws.delivery_log import DeliveryLog
from cdp.aws.destination_queues import DestinationQueues
from cdp.aws.secrets import SecretReader
from cdp.config import Settings
from cdp.resources import destination_queue_name


def destination_config(settings: Settings, destination_id: str) -> DestinationConfig:
    by_id = {d.id: d for d in load_destinations_file(settings.destinations_file)}
    config = by_id.get(destination_id)
    if config is None:
        raise RuntimeError(f"destination {destination_id!r} is not in the deployment's destinations")
    return config


def destination_worker(settings: Settings, destination_id: str, aws: Any = client) -> DestinationWorker:
    config = destination_config(settings, destination_id)
    sqs = aws("sqs")
    prefix = settings.destination_queue_prefix
    queue_url = sqs.get_queue_url(QueueName=destination_queue_name(prefix, config.id, config.type))["QueueUrl"]
    dlq_url = sqs.get_queue_url(
        QueueName=destination_queue_name(prefix, config.id, config.type, dead_letter=True))["QueueUrl"]
    ddb = aws("dynamodb")
    secrets = SecretReader()
    return DestinationWorker(
        config,
        RefreshingDestination(lambda: build_destination(config, secrets, aws)),
        DestinationQueues(sqs, queue_url, dlq_url),
        ActivationProfiles(ddb, settings.identity_table, settings.events_table, settings.memberships_table),
        DeliveryLog(ddb, settings.delivery_log_table),
        retry_base_s=settings.retry_base_seconds,
    )
