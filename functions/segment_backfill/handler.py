"""Segment backfill: every 5 minutes (EventBridge), starts or continues the backfill of pending specs.

``cdp.aws.backfill_store.DynamoBackfill`` does the work; this handler gives it the time
the invocation has left (minus a margin to write the checkpoint and release the lease)
and reports what it did. With nothing waiting it returns after one read of the catalog.
Progress is readable any time through ``GET /v1/admin/backfills`` (``cdp backfills``).
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.aws.audience_pass import AudiencePass
from cdp.aws.backfill_store import DynamoBackfill
from cdp.aws.clients import client
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer

# The scan is I/O-bound: per item a few DynamoDB round trips (history Queries, an
# UpdateItem), each ~5-10 ms, while botocore's parsing of the answers is the CPU work.
# At 1,024 MB on arm64 a function has about 0.6 vCPU; eight threads keep it busy (more
# would only queue on the GIL and the CPU). One segment per thread: every segment is
# worked at once, and more segments would only help more concurrent invocations, which
# the run's lease forbids. (The segment count is fixed when a run starts.)
SEGMENTS = 8
WORKERS = 8
# Stop this long before the timeout (at most; a tenth of the time left for short
# invocations): the last page's checkpoint write and the lease release must fit.
MARGIN_S = 30.0


@lru_cache(maxsize=1)
def dependencies() -> DynamoBackfill:
    settings = get_settings()
    # One client for all threads: boto3 clients are thread-safe, and its pool
    # (cdp.aws.clients, 32 connections) exceeds the workers.
    ddb = client("dynamodb")
    return DynamoBackfill(lambda: ddb, settings.identity_table, settings.events_table, settings.segments_table,
                          segments=SEGMENTS, workers=WORKERS,
                          settle=timedelta(seconds=settings.backfill_settle_seconds))


@lru_cache(maxsize=1)
def audience_pass() -> AudiencePass:
    settings = get_settings()
    return AudiencePass(client("dynamodb"), settings.identity_table, settings.segments_table)


def deadline_of(context: LambdaContext) -> float:
    """The ``time.monotonic()`` instant to stop working at: the time left minus a margin."""
    left = context.get_remaining_time_in_millis() / 1000
    return time.monotonic() + left - min(MARGIN_S, left / 10)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deadline = deadline_of(context)
    outcome = dependencies().run(deadline)
    if outcome.finished:
        # Aggregates complete: audiences not yet evaluated against every stored profile are.
        evaluated = audience_pass().run(deadline)
        if evaluated.state != "idle":
            metrics.add_metric(name="AudiencePassProfilesTouched", unit=MetricUnit.Count, value=evaluated.touched)
            logger.info("audience pass", extra={"state": evaluated.state, "audiences": len(evaluated.audiences),
                                                "touched": evaluated.touched})
    if outcome.state == "idle":
        # Nothing waits (most invocations): no metrics or log lines of zeros every tick.
        return {"state": outcome.state, "finished": outcome.finished}
    # Counts and ids only: no profile, identifier or trait ever reaches the log.
    for name, value in (("BackfillItemsScanned", outcome.scanned), ("BackfillProfilesFilled", outcome.profiles),
                        ("BackfillProfilesWritten", outcome.written), ("BackfillConflicts", outcome.conflicts),
                        ("BackfillAccountsWritten", outcome.accounts)):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="BackfillsCompleted", unit=MetricUnit.Count, value=int(outcome.state == "done"))
    result = {"state": outcome.state, "finished": outcome.finished, "run_id": outcome.run_id,
              "scanned": outcome.scanned, "profiles": outcome.profiles, "written": outcome.written,
              "conflicts": outcome.conflicts, "accounts": outcome.accounts}
    logger.info("backfill invocation", extra=result)
    return result
