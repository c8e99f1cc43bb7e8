"""The one place that names every AWS resource and key schema of the CDP.

The CDK constructs (``infra/``) and the embedded local stack (``cdp.local``) both
build their tables, streams, buckets and queues from these definitions, and a test
compares the synthesized CloudFormation template with them, so the two cannot drift.

Physical names: in the cloud CloudFormation chooses them and hands them to each
function through the environment variables named here (``env``); locally the
``local_name`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

KeyType = Literal["S", "N", "B"]


@dataclass(frozen=True)
class Key:
    name: str
    type: KeyType = "S"


@dataclass(frozen=True)
class GlobalIndex:
    name: str
    partition_key: Key
    sort_key: Key | None = None


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table: on-demand, encrypted, point-in-time recovery, TTL if set."""

    logical_id: str
    local_name: str
    env: str
    partition_key: Key
    sort_key: Key | None = None
    ttl_attribute: str | None = None
    stream: Literal["NEW_IMAGE", "NEW_AND_OLD_IMAGES", "KEYS_ONLY"] | None = None
    indexes: tuple[GlobalIndex, ...] = field(default_factory=tuple)
    purpose: str = ""


@dataclass(frozen=True)
class StreamSpec:
    logical_id: str
    local_name: str
    env: str
    purpose: str = ""


@dataclass(frozen=True)
class BucketSpec:
    logical_id: str
    local_name: str
    env: str
    purpose: str = ""


@dataclass(frozen=True)
class QueueSpec:
    logical_id: str
    local_name: str
    env: str
    purpose: str = ""


# --- DynamoDB tables -------------------------------------------------------------

SOURCES_TABLE = TableSpec(
    logical_id="SourcesTable",
    local_name="cdp-sources",
    env="CDP_SOURCES_TABLE",
    partition_key=Key("key_hash"),
    indexes=(GlobalIndex("by_source_id", Key("source_id")),),
    purpose="Sources and their write keys, stored only as SHA-256 hashes.",
)

EVENTS_TABLE = TableSpec(
    logical_id="EventsTable",
    local_name="cdp-events",
    env="CDP_EVENTS_TABLE",
    partition_key=Key("pk"),
    sort_key=Key("sk"),
    ttl_attribute="expires_at",
    purpose="Every accepted event once, per person (also what dedupes them); merge log and account links.",
)

QUARANTINE_TABLE = TableSpec(
    logical_id="QuarantineTable",
    local_name="cdp-quarantine",
    env="CDP_QUARANTINE_TABLE",
    partition_key=Key("source_id"),
    sort_key=Key("sk"),
    ttl_attribute="expires_at",
    purpose="Rejected events with the reason, for operators to list and redrive.",
)

IDENTITY_TABLE = TableSpec(
    logical_id="IdentityTable",
    local_name="cdp-identity",
    env="CDP_IDENTITY_TABLE",
    partition_key=Key("pk"),
    # Old and new images: the segment evaluator diffs a profile's traits and aggregate
    # states, and sees a home profile lose ``solo`` when it is merged away.
    stream="NEW_AND_OLD_IMAGES",
    purpose="Identity graph: identifier -> profile, and each profile's identifiers and merge state.",
)

SEGMENTS_TABLE = TableSpec(
    logical_id="SegmentsTable",
    local_name="cdp-segments",
    env="CDP_SEGMENTS_TABLE",
    partition_key=Key("pk"),
    purpose="Audience and computed trait definitions (issue 4), written through the admin API.",
)

# Profile first: the evaluator reads one profile's memberships with one consistent Query
# of the main key (a GSI read could be stale and decide an entry twice). Two sparse
# indexes: ``members`` holds only current members (``member_of`` is set on entry and
# removed on exit), so listing an audience reads no former members; ``due`` holds only
# memberships a sliding window may flip (``next_check``: the UTC hour bucket plus a
# shard suffix ``#00``-``#15``, so the midnight peak spreads over 16 index partitions).
MEMBERSHIPS_TABLE = TableSpec(
    logical_id="MembershipsTable",
    local_name="cdp-memberships",
    env="CDP_MEMBERSHIPS_TABLE",
    partition_key=Key("profile_id"),
    sort_key=Key("audience_id"),
    # For activation (issue 5): every entry and exit, with the before and after.
    stream="NEW_AND_OLD_IMAGES",
    indexes=(
        GlobalIndex("members", Key("member_of"), Key("profile_id")),
        GlobalIndex("due", Key("next_check"), Key("profile_id")),
    ),
    purpose="Audience memberships: one item per profile and audience (member or not, entered/exited at).",
)

# One item per destination and UTC hour: attempts, outcomes, last error, latency buckets
# (cdp.activation.delivery_log), kept 90 days.
DELIVERY_LOG_TABLE = TableSpec(
    logical_id="DeliveryLogTable",
    local_name="cdp-delivery-log",
    env="CDP_DELIVERY_LOG_TABLE",
    partition_key=Key("destination_id"),
    sort_key=Key("hour"),
    ttl_attribute="expires_at",
    purpose="Activation's delivery log: per destination and hour, attempts, outcomes, last error, latency.",
)

TABLES: tuple[TableSpec, ...] = (
    SOURCES_TABLE, EVENTS_TABLE, QUARANTINE_TABLE, IDENTITY_TABLE, SEGMENTS_TABLE, MEMBERSHIPS_TABLE,
    DELIVERY_LOG_TABLE,
)

# --- Kinesis ---------------------------------------------------------------------

EVENT_STREAM = StreamSpec(
    logical_id="EventStream",
    local_name="cdp-events",
    env="CDP_EVENT_STREAM",
    purpose="Accepted (and rejected-for-quarantine) events, one record each; see docs/record-format.md.",
)

STREAMS: tuple[StreamSpec, ...] = (EVENT_STREAM,)

# --- S3 ----------------------------------------------------------------------------

ARCHIVE_BUCKET = BucketSpec(
    logical_id="ArchiveBucket",
    local_name="cdp-archive",
    env="CDP_ARCHIVE_BUCKET",
    purpose="gzip JSONL of every accepted event, partitioned by date, for replay.",
)

SYNC_SNAPSHOT_BUCKET = BucketSpec(
    logical_id="SyncSnapshotBucket",
    local_name="cdp-sync-snapshots",
    env="CDP_SYNC_SNAPSHOT_BUCKET",
    purpose="Batch syncs' snapshots: the profile ids each destination was last told an audience holds.",
)

BUCKETS: tuple[BucketSpec, ...] = (ARCHIVE_BUCKET, SYNC_SNAPSHOT_BUCKET)

# --- SQS ---------------------------------------------------------------------------

STREAM_CONSUMER_DLQ = QueueSpec(
    logical_id="StreamConsumerDlq",
    local_name="cdp-stream-consumer-dlq",
    env="CDP_STREAM_CONSUMER_DLQ",
    purpose="On-failure destination of the Kinesis consumer: batches that kept failing.",
)

SEGMENT_EVALUATOR_DLQ = QueueSpec(
    logical_id="SegmentEvaluatorDlq",
    local_name="cdp-segment-evaluator-dlq",
    env="CDP_SEGMENT_EVALUATOR_DLQ",
    purpose="On-failure destination of the identity-table stream mapping: profile changes not evaluated.",
)

QUEUES: tuple[QueueSpec, ...] = (STREAM_CONSUMER_DLQ, SEGMENT_EVALUATOR_DLQ)

# --- Lambda functions -------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    folder: str  # functions/<folder>/handler.py, entry point ``handler``
    memory_mb: int
    timeout_s: int
    purpose: str = ""


COLLECTOR_FUNCTION = FunctionSpec(
    logical_id="CollectorFunction",
    folder="collector",
    memory_mb=512,
    timeout_s=10,
    purpose="Segment-compatible HTTP API: validates, enriches and puts events on the stream.",
)

STREAM_CONSUMER_FUNCTION = FunctionSpec(
    logical_id="StreamConsumerFunction",
    folder="stream_consumer",
    memory_mb=512,
    timeout_s=60,
    purpose="Kinesis consumer: records each event once, archives to S3, resolves identities, updates profiles.",
)

PROFILE_API_FUNCTION = FunctionSpec(
    logical_id="ProfileApiFunction",
    folder="profile_api",
    memory_mb=512,
    timeout_s=10,
    purpose="Segment-compatible Profile API: reads profiles, traits, events and links with an access token.",
)

ADMIN_API_FUNCTION = FunctionSpec(
    logical_id="AdminApiFunction",
    folder="admin_api",
    memory_mb=256,
    timeout_s=10,
    purpose="Admin API: the identity resolution settings at run time, with an admin access token.",
)

SEGMENT_EVALUATOR_FUNCTION = FunctionSpec(
    logical_id="SegmentEvaluatorFunction",
    folder="segment_evaluator",
    memory_mb=512,
    timeout_s=60,
    purpose="Identity-table stream consumer: re-evaluates a changed profile's audiences, records "
    "memberships, emits Audience Entered/Exited.",
)

# 1,024 MB on arm64 (about 0.6 vCPU): the backfill's eight threads are mostly waiting on
# DynamoDB, and botocore's parsing of their answers is what uses the CPU; less memory
# would starve them of CPU. Five minutes, the period of its schedule: an invocation works
# until shortly before its timeout and checkpoints, and the next one (whose lease would
# otherwise make it return at once) starts as it ends.
SEGMENT_BACKFILL_FUNCTION = FunctionSpec(
    logical_id="SegmentBackfillFunction",
    folder="segment_backfill",
    memory_mb=1024,
    timeout_s=300,
    purpose="Backfill: fills new aggregate specs' states from the history (events before live_from) by a "
    "checkpointed parallel scan of the identity table; marks the specs' backfill done.",
)

# The scheduler only Queries the due index and updates profile items: I/O-bound, little
# memory. Up to 15 minutes (Lambda's maximum) for a midnight peak or a catch-up of missed
# hours; hourly runs never overlap.
SEGMENT_SCHEDULER_FUNCTION = FunctionSpec(
    logical_id="SegmentSchedulerFunction",
    folder="segment_scheduler",
    memory_mb=512,
    timeout_s=900,
    purpose="Hourly: touches the profiles whose time-based memberships are due (due index), so the "
    "segment evaluator re-evaluates them.",
)

FUNCTIONS: tuple[FunctionSpec, ...] = (
    COLLECTOR_FUNCTION, STREAM_CONSUMER_FUNCTION, PROFILE_API_FUNCTION, ADMIN_API_FUNCTION,
    SEGMENT_EVALUATOR_FUNCTION, SEGMENT_BACKFILL_FUNCTION, SEGMENT_SCHEDULER_FUNCTION,
)



# --- Activation (issue 5): built only when destinations are configured ------------------
# Not in FUNCTIONS: a deployment without destinations has none of these. Per destination
# the CDK app creates one function of DESTINATION_FUNCTION's code (its logical id from
# ``destination_logical_id``), its queue and its dead-letter queue.

ACTIVATION_ROUTER_FUNCTION = FunctionSpec(
    logical_id="ActivationRouterFunction",
    folder="activation_router",
    memory_mb=512,
    timeout_s=60,
    purpose="Activation router: memberships-table stream (entries, exits) and event stream (trigger rules) "
    "-> one message per interested destination on its queue.",
)

# One request per message at most 10 s (webhook timeout), 10 messages per FIFO batch:
# 2 minutes covers a batch of slow answers; the queue's visibility timeout is 6x that.
DESTINATION_FUNCTION = FunctionSpec(
    logical_id="DestinationFunction",
    folder="destination",
    memory_mb=256,
    timeout_s=120,
    purpose="Destination: delivers its queue's messages to one destination (retries, dead letters).",
)

# A destination's scheduled batch sync (cdp.activation.sync): it runs with its
# destination's role. Up to 15 minutes per invocation; a sync that needs longer
# checkpoints and invokes itself again to continue.
DESTINATION_SYNC_FUNCTION = FunctionSpec(
    logical_id="DestinationSyncFunction",
    folder="destination_sync",
    memory_mb=1024,
    timeout_s=900,
    purpose="Batch sync: sends one destination's audiences' adds and removes since the last sync.",
)

ACTIVATION_FUNCTIONS: tuple[FunctionSpec, ...] = (ACTIVATION_ROUTER_FUNCTION, DESTINATION_FUNCTION,
                                                  DESTINATION_SYNC_FUNCTION)

ACTIVATION_ROUTER_DLQ = QueueSpec(
    logical_id="ActivationRouterDlq",
    local_name="cdp-activation-router-dlq",
    env="CDP_ACTIVATION_ROUTER_DLQ",
    purpose="On-failure destination of the router's stream mappings: changes and events not routed.",
)

# Destination queue names: ``<prefix><destination id>`` (+ ``-dlq``, + ``.fifo`` for FIFO
# queues). The router finds a destination's queue by name (GetQueueUrl, cached), so one
# environment variable serves any number of destinations.
DESTINATION_QUEUE_PREFIX_ENV = "CDP_DESTINATION_QUEUE_PREFIX"
LOCAL_DESTINATION_QUEUE_PREFIX = "cdp-dest-"
DESTINATIONS_FILE_ENV = "CDP_DESTINATIONS_FILE"
DESTINATIONS_FILE = "destinations.json"  # beside handler.py in the router's and destinations' code
DESTINATION_ID_ENV = "CDP_DESTINATION_ID"
# Destination types whose APIs take one message per request, in order: FIFO queues with
# the profile as message group. The others (batch APIs, files) read standard queues in
# large batches and send each profile's current state (docs/activation.md).
FIFO_DESTINATION_TYPES = frozenset({"webhook", "slack", "eventbridge", "sqs"})
SQS_QUEUE_NAME_MAX = 80


def destination_queue_name(prefix: str, destination_id: str, destination_type: str,
                           dead_letter: bool = False) -> str:
    """A destination's queue (or dead-letter queue) name; ``ValueError`` if SQS would refuse it."""
    fifo = destination_type in FIFO_DESTINATION_TYPES
    name = f"{prefix}{destination_id}{'-dlq' if dead_letter else ''}{'.fifo' if fifo else ''}"
    if len(name) > SQS_QUEUE_NAME_MAX:
        raise ValueError(f"queue name {name!r} is over {SQS_QUEUE_NAME_MAX} characters: shorten the destination "
                         "id or the stack name")
    return name


def destination_of_queue(queue_name: str, prefix: str) -> str:
    """The destination id of one of its queues' names (the inverse of ``destination_queue_name``)."""
    return queue_name.removeprefix(prefix).removesuffix(".fifo").removesuffix("-dlq")


def destination_logical_id(destination_id: str) -> str:
    """``Destination<CamelCaseId>``: a stable CloudFormation id per destination."""
    camel = "".join(part[:1].upper() + part[1:] for part in destination_id.replace("_", "-").split("-"))
    return f"Destination{camel}"

# --- Schedules (EventBridge rules) ----------------------------------------------------
# Read by the CDK construct; the local stack runs the same functions on shorter periods
# (``EmbeddedStack(backfill_period_s=..., scheduler_period_s=...)``).


@dataclass(frozen=True)
class ScheduleSpec:
    """An EventBridge rule invoking ``function`` (asynchronously) on ``expression``."""

    logical_id: str
    function: FunctionSpec
    expression: str  # EventBridge schedule expression: rate(...) or cron(...)
    # Lambda's own retries of a failed asynchronous invocation (0-2).
    retry_attempts: int
    purpose: str = ""


# Every 5 minutes: with nothing waiting an invocation costs one Scan of the (small)
# segments table and returns; with a backfill running, each invocation continues it from
# its checkpoint, so a new definition is ready within minutes of its settle time. No
# retries: the next tick is the retry (and a retry would only find the lease held).
SEGMENT_BACKFILL_SCHEDULE = ScheduleSpec(
    logical_id="SegmentBackfillSchedule",
    function=SEGMENT_BACKFILL_FUNCTION,
    expression="rate(5 minutes)",
    retry_attempts=0,
    purpose="Starts or continues the backfill of pending aggregate specs.",
)

# A minute past every hour: the scheduler re-evaluates the hour buckets that have ended,
# so running just after the hour turns keeps the delay of a window's flip to ~1 minute.
# Two retries (Lambda's default): a run is idempotent (hours are checkpointed, a second
# touch changes nothing), and a failed run would otherwise wait for the next hour.
SEGMENT_SCHEDULER_SCHEDULE = ScheduleSpec(
    logical_id="SegmentSchedulerSchedule",
    function=SEGMENT_SCHEDULER_FUNCTION,
    expression="cron(1 * * * ? *)",
    retry_attempts=2,
    purpose="Re-evaluates the time-based memberships due in the hours that have ended.",
)

SCHEDULES: tuple[ScheduleSpec, ...] = (SEGMENT_BACKFILL_SCHEDULE, SEGMENT_SCHEDULER_SCHEDULE)


# --- HTTP API routes ----------------------------------------------------------------
# The one HTTP API fronts several functions. API Gateway picks the most specific route
# and falls back to ``$default``; the local gateway routes the same way, from this list.


@dataclass(frozen=True)
class HttpRouteSpec:
    route_key: str  # "$default" or "<METHOD> <path>", path segments "{name}" or a last "{name+}"
    function: FunctionSpec
    purpose: str = ""


PROFILE_API_ROUTE = HttpRouteSpec(
    route_key="GET /v1/spaces/{proxy+}",
    function=PROFILE_API_FUNCTION,
    purpose="Profile API (read-only, access tokens).",
)
DEFAULT_ROUTE = HttpRouteSpec(
    route_key="$default",
    function=COLLECTOR_FUNCTION,
    purpose="Everything else: the Segment tracking API, analytics.js settings, OpenAPI, health.",
)

ADMIN_API_ROUTE = HttpRouteSpec(
    route_key="ANY /v1/admin/{proxy+}",
    function=ADMIN_API_FUNCTION,
    purpose="Admin API (identity settings, audience and computed trait definitions; admin access tokens).",
)

HTTP_ROUTES: tuple[HttpRouteSpec, ...] = (PROFILE_API_ROUTE, ADMIN_API_ROUTE, DEFAULT_ROUTE)


# --- Event source mappings -------------------------------------------------------
# One definition read by both the CDK construct and the local stack's poller, so the
# local consumer sees the batches the deployed one will see.


@dataclass(frozen=True)
class KinesisEventSourceSpec:
    """Settings of the Kinesis -> Lambda event source mapping, each with its reason."""

    # Up to 500 records per invocation (Lambda also caps a batch at 6 MB): the
    # per-batch costs (one S3 object, one Lambda request, the batched reads and writes
    # of the history and the identity graph) are spread over many events, 2 invocations per 1,000 events at full load,
    # while one invocation needs ~0.25 s of CPU, far inside the 60 s timeout.
    batch_size: int = 500
    # Wait up to 1 s to fill a batch: at low traffic this turns one invocation per
    # event into one per second per shard, at the cost of <= 1 s extra latency.
    max_batching_window_s: int = 1
    # Split a failing batch in two and retry each half, so one poison record is
    # isolated instead of blocking the shard.
    bisect_batch_on_error: bool = True
    # Finite retries: after 3 the batch goes to the on-failure destination (SQS DLQ)
    # and the shard moves on, so a poison record cannot stall the pipeline.
    retry_attempts: int = 3
    # Records older than 6 h go to the DLQ: they must be redriven while the stream
    # still holds them (retention 24 h), which leaves 18 h to act.
    max_record_age_s: int = 6 * 3600
    # The handler reports failed records individually (Powertools partial batch
    # response), so successful records before the first failure are not redone.
    report_batch_item_failures: bool = True
    # Start with the oldest record, so nothing written before the mapping exists is lost.
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    # One concurrent batch per shard keeps per-person order; raise (up to 10) for
    # throughput: order per partition key is still kept.
    parallelization_factor: int = 1


STREAM_CONSUMER_ESM = KinesisEventSourceSpec()

# Kinesis data retention, hours (the DLQ only holds pointers into the stream).
EVENT_STREAM_RETENTION_HOURS = 24


# Lambda event filtering of the identity table's stream: only profile and account items
# reach the evaluator. A ``prof#`` item (live or merged), a home identifier item
# (``solo``), a home identifier item that just lost ``solo`` (merged away: its old image
# had it), or an account (``acct#``: its members' account audiences follow its traits).
# Plain identifier pointers and settings items are dropped without an invocation (and
# without cost). Filters are ORed; Lambda allows 5 per mapping.
PROFILE_ITEM_FILTERS: tuple[str, ...] = (
    '{"dynamodb": {"Keys": {"pk": {"S": [{"prefix": "prof#"}]}}}}',
    '{"dynamodb": {"NewImage": {"solo": {"BOOL": [true]}}}}',
    '{"dynamodb": {"OldImage": {"solo": {"BOOL": [true]}}}}',
    '{"dynamodb": {"Keys": {"pk": {"S": [{"prefix": "acct#"}]}}}}',
)


@dataclass(frozen=True)
class DynamoDbStreamEventSourceSpec:
    """Settings of a DynamoDB Streams -> Lambda event source mapping, each with its reason.

    The field names are those of ``cdp.local.dynamodb_esm.DynamoDbEventSourceSpec``, so
    the local stack's emulated mapping is built from the same values.
    """

    # 100 profile changes per invocation: each costs one Query of the profile's
    # memberships and, on a change, a conditional write per audience; 100 keeps an
    # invocation well under a second while spreading the per-invocation overhead.
    batch_size: int = 100
    # Wait up to 1 s to fill a batch: at low traffic this turns one invocation per
    # profile write into one per second per shard, at <= 1 s extra latency.
    max_batching_window_s: int = 1
    # Split a failing batch so one poison profile is isolated.
    bisect_batch_on_error: bool = True
    # Finite retries, then the batch's pointers go to the DLQ and the shard moves on
    # (DynamoDB Streams' default is to retry until the record expires, stalling the shard).
    retry_attempts: int = 3
    # Records older than 6 h go to the DLQ; the stream keeps records 24 h, which leaves
    # 18 h to redrive them (re-evaluate the profiles named in the DLQ message).
    max_record_age_s: int = 6 * 3600
    # Powertools' partial batch response: records before the first failure are not redone.
    report_batch_item_failures: bool = True
    # From the oldest record: profile changes made before the mapping existed count too.
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    # Only profile items (see PROFILE_ITEM_FILTERS).
    filter_patterns: tuple[str, ...] = PROFILE_ITEM_FILTERS
    # One batch per shard at a time: one item's changes are evaluated in order. The
    # decisions are versioned anyway (cdp.aws.membership_store), so raising it (up to 10;
    # order per item is still kept) is safe for throughput.
    parallelization_factor: int = 1


SEGMENT_EVALUATOR_ESM = DynamoDbStreamEventSourceSpec()


# --- Activation's event source mappings -------------------------------------------------

# The memberships table's stream into the router. 100 changes per invocation (each is a
# decision and one SendMessageBatch entry per destination, no reads), up to 1 s to fill a
# batch. The CDK construct adds filters: only the configured destinations' audiences.
# The router fails or succeeds a batch as a whole (no partial batch response).
ACTIVATION_MEMBERSHIPS_ESM = DynamoDbStreamEventSourceSpec(filter_patterns=(), report_batch_item_failures=False)

# The event stream into the router, for trigger rules: the CDK construct filters on the
# triggers' event types and names, so only candidate events invoke it (Lambda's event
# filtering is free). 100 per invocation: a matching event costs a profile lookup.
# From the newest record: a trigger is about what happens now, not the stream's last day.
ACTIVATION_EVENTS_ESM = KinesisEventSourceSpec(batch_size=100, starting_position="LATEST",
                                               report_batch_item_failures=False)


@dataclass(frozen=True)
class QueueEventSourceSpec:
    """Settings of an SQS -> Lambda event source mapping (a destination's queue)."""

    # FIFO queues: at most 10 records per batch and no batching window (Lambda's limits);
    # standard queues: up to 10,000 and a window of up to 300 s.
    batch_size: int
    max_batching_window_s: int = 0
    # Retried and held messages are reported one by one (cdp.activation.runner).
    report_batch_item_failures: bool = True


def destination_esm(destination_type: str, batch_size: int) -> QueueEventSourceSpec:
    """A destination's mapping: FIFO types get their batch size (at most 10); batch APIs a
    window of 30 s to gather many changes into one request."""
    if destination_type in FIFO_DESTINATION_TYPES:
        return QueueEventSourceSpec(batch_size=min(batch_size, 10))
    return QueueEventSourceSpec(batch_size=min(batch_size, 10_000), max_batching_window_s=30)


# A destination queue's visibility timeout: 6x the function's timeout (the AWS guidance
# for SQS-triggered functions, so a batch is never redelivered while still running).
DESTINATION_VISIBILITY_S = 6 * DESTINATION_FUNCTION.timeout_s
# Messages wait up to the retry window (at most a day) behind a retried one: 4 days.
DESTINATION_RETENTION_S = 4 * 24 * 3600
DEAD_LETTER_RETENTION_S = 14 * 24 * 3600
