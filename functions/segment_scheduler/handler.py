"""Segment scheduler: hourly (EventBridge), touches the profiles whose time-based memberships are due.

The identity table's stream then hands each touched profile to the segment evaluator,
which re-evaluates its time-based audiences (``cdp.aws.scheduled_reevaluation``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.aws.clients import client
from cdp.aws.scheduled_reevaluation import ScheduledReevaluation
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer


@lru_cache(maxsize=1)
def dependencies() -> ScheduledReevaluation:
    settings = get_settings()
    return ScheduledReevaluation(client("dynamodb"), settings.memberships_table, settings.identity_table,
                                 settings.segments_table)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = dependencies().run()
    metrics.add_metric(name="MembershipsDue", unit=MetricUnit.Count, value=run.due)
    metrics.add_metric(name="ProfilesTouched", unit=MetricUnit.Count, value=run.touched)
    return {"hours": run.hours, "due": run.due, "touched": run.touched, "gone": run.gone}
