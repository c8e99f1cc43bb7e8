"""The embedded local stack: moto, the CDP's resources, its functions, wired like in AWS.

``EmbeddedStack.start()`` runs, in this process (moto in a child process of its own):

1. moto's server (``cdp.local.moto_server``) on ``aws_port``, and points boto3 at it
   through ``AWS_ENDPOINT_URL`` (so handlers, tests and the user's AWS CLI with
   ``--endpoint-url`` all see one state);
2. the tables, stream, bucket and queue of ``cdp.resources``;
3. the source ``src_local`` with the write key, and the access token of the Profile API
   for ``space`` (both stored as hashes, as ``cdp sources`` / ``cdp tokens`` store them);
4. the Kinesis event source mapping (one poller per shard) into the stream consumer, and
   the identity table's DynamoDB Streams mapping (filtered to profile items, as
   deployed) into the segment evaluator, each with its DLQ;
5. the HTTP API on ``host:port``: the routes of ``cdp.resources.HTTP_ROUTES``, the
   Profile API on ``GET /v1/spaces/{proxy+}`` and the collector on ``$default``;
6. the schedules of ``cdp.resources.SCHEDULES`` on short local periods: the backfill
   (every ``backfill_period_s``, 2 s) and the segment scheduler (every
   ``scheduler_period_s``, 60 s), each invoking its function with the event an
   EventBridge schedule rule sends.

``GET /health`` answers 200 only once all of that is ready.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3

from cdp import config, resources
from cdp.access_tokens import AccessTokenRegistry, access_token_key, valid_space_id
from cdp.activation.destinations import DestinationConfig
from cdp.aws.destination_admin import destination_types_text
from cdp.local import moto_speedups
from cdp.local.activation import LocalActivation
from cdp.local.dynamodb_esm import (
    DynamoDbEventSourceMapping,
    DynamoDbEventSourceSpec,
    dynamodb_streams_client,
    latest_stream_arn,
)
from cdp.local.functions import LocalFunction
from cdp.local.gateway import HttpApiGateway
from cdp.local.kinesis_esm import KinesisEventSourceMapping, SqsDestination
from cdp.local.lambda_events import REGION
from cdp.local.moto_server import MotoProcess, MotoServer
from cdp.local.provisioning import Provisioned, provision
from cdp.local.schedules import LocalSchedule
from cdp.resources import (
    BucketSpec,
    DynamoDbStreamEventSourceSpec,
    KinesisEventSourceSpec,
    QueueSpec,
    StreamSpec,
    TableSpec,
)
from cdp.sources import SourceRegistry, hash_write_key

log = logging.getLogger(__name__)

DEFAULT_WRITE_KEY = "local-dev-key"
# A fixed, printed token for the read APIs of the local stack; never valid in the cloud
# (a deployment only knows the tokens created with `cdp tokens create`).
DEFAULT_ACCESS_TOKEN = "cdp-local-dev-token"
# Where the `cdp` CLI looks for a token when none is given (client side only: the
# functions never see a token in their environment, only hashes in the sources table).
ACCESS_TOKEN_ENV = "CDP_ACCESS_TOKEN"
DEFAULT_SPACE = "default"
LOCAL_SOURCE_ID = "src_local"
LOCAL_SOURCE_NAME = "Local development"
LOCAL_TOKEN_ID = "tok_local"
LOCAL_TOKEN_NAME = "Local development"

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class EmbeddedStack:
    """The CDP running in this process against moto: start(), use, stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        aws_port: int = 4566,
        write_key: str = DEFAULT_WRITE_KEY,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        space: str = DEFAULT_SPACE,
        shards: int = 1,
        functions_dir: str | Path | None = None,
        esm_spec: KinesisEventSourceSpec = resources.STREAM_CONSUMER_ESM,
        retry_backoff_s: float = 0.5,
        poll_interval_s: float = 0.1,
        extra_env: dict[str, str] | None = None,
        backfill_period_s: float = 2.0,
        scheduler_period_s: float = 60.0,
        backfill_timeout_s: int = 5,
        moto_process: bool = True,
        destinations: Sequence[DestinationConfig] = (),
        destination_secrets: Mapping[str, str] | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        if not valid_space_id(space):
            raise ValueError("space must be 1-64 letters, digits, '-' or '_' (it is part of URLs)")
        self.host = host
        self.write_key = write_key
        self.access_token = access_token
        self.space = space
        self.shards = shards
        self.esm_spec = esm_spec
        self._port = port
        self._aws_port = aws_port
        self._functions_dir = functions_dir
        self._retry_backoff = retry_backoff_s
        self._poll_interval = poll_interval_s
        self._extra_env = dict(extra_env or {})
        self._destinations = list(destinations)
        self._destination_secrets = dict(destination_secrets or {})
        self.activation: LocalActivation | None = None
        # The destinations' configuration file the functions read (CDP_DESTINATIONS_FILE).
        self._destinations_dir = tempfile.TemporaryDirectory(prefix="cdp-destinations-")
        self._destinations_file = Path(self._destinations_dir.name) / resources.DESTINATIONS_FILE
        # Locally the backfill gets a short timeout: each invocation then works a few
        # seconds and checkpoints (as the deployed one does every few minutes), so stop()
        # never waits long for it.
        self._backfill_period = backfill_period_s
        self._scheduler_period = scheduler_period_s
        self._backfill_timeout = backfill_timeout_s
        self._schedules: list[LocalSchedule] = []
        # moto in a child process (cdp.local.moto_server): its CPU and the functions' are
        # then on two cores, not one interpreter lock. In this process if False.
        self._moto_process = moto_process
        self._moto: MotoServer | MotoProcess | None = None
        self._gateway: HttpApiGateway | None = None
        self._mapping: KinesisEventSourceMapping | None = None
        self._profile_mapping: DynamoDbEventSourceMapping | None = None
        self._saved_env: dict[str, str | None] = {}
        self._ready = threading.Event()
        self.collector: LocalFunction | None = None
        self.stream_consumer: LocalFunction | None = None
        self.profile_api: LocalFunction | None = None
        self.segment_evaluator: LocalFunction | None = None
        self.segment_backfill: LocalFunction | None = None
        self.segment_scheduler: LocalFunction | None = None
        self.provisioned: Provisioned | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> EmbeddedStack:
        """Start everything; on failure, stop what was started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # moto's werkzeug server logs every AWS call at INFO; the handlers' own logs matter more.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto_speedups.apply()
        moto = (MotoProcess if self._moto_process else MotoServer)(self.host, self._aws_port)
        moto.start()
        self._moto = moto
        # moto keeps its state per process, shared by every server and mock_aws in it:
        # a new stack starts from empty AWS, whatever ran in this process before.
        self._reset_moto()
        self._apply_env()

        # Loading the handlers first surfaces import errors before anything listens.
        self.collector = LocalFunction.from_spec(resources.COLLECTOR_FUNCTION, self._functions_dir)
        self.stream_consumer = LocalFunction.from_spec(resources.STREAM_CONSUMER_FUNCTION,
                                                       self._functions_dir)
        self.profile_api = LocalFunction.from_spec(resources.PROFILE_API_FUNCTION, self._functions_dir)
        self.admin_api = LocalFunction.from_spec(resources.ADMIN_API_FUNCTION, self._functions_dir)
        self.segment_evaluator = LocalFunction.from_spec(resources.SEGMENT_EVALUATOR_FUNCTION,
                                                         self._functions_dir)
        self.segment_backfill = LocalFunction.from_spec(
            dataclasses.replace(resources.SEGMENT_BACKFILL_FUNCTION, timeout_s=self._backfill_timeout),
            self._functions_dir, max_concurrency=1)
        self.segment_scheduler = LocalFunction.from_spec(resources.SEGMENT_SCHEDULER_FUNCTION, self._functions_dir,
                                                         max_concurrency=1)
        functions = {spec.logical_id: function for spec, function in (
            (resources.COLLECTOR_FUNCTION, self.collector), (resources.PROFILE_API_FUNCTION, self.profile_api),
            (resources.ADMIN_API_FUNCTION, self.admin_api))}
        routes = [(route.route_key, functions[route.function.logical_id].invoke)
                  for route in resources.HTTP_ROUTES if route.route_key != "$default"]
        default = next(r for r in resources.HTTP_ROUTES if r.route_key == "$default")
        gateway = HttpApiGateway(functions[default.function.logical_id].invoke, host=self.host, port=self._port,
                                 ready=self._ready.is_set, routes=routes)
        gateway.start()
        self._gateway = gateway

        session = self.session()
        self.provisioned = provision(session, shards=self.shards)
        self.activation = LocalActivation(session, self._destinations, functions_dir=self._functions_dir,
                                          secrets=self._destination_secrets, retry_backoff_s=self._retry_backoff,
                                          poll_interval_s=self._poll_interval,
                                          destinations_file=self._destinations_file)
        self.activation.provision()
        self._seed_source(session)
        self._seed_access_token(session)
        self.collector.warm_up()
        self.stream_consumer.warm_up()
        self.profile_api.warm_up()

        dlq_url = self.provisioned.queue_urls[resources.STREAM_CONSUMER_DLQ.local_name]
        mapping = KinesisEventSourceMapping(
            kinesis=session.client("kinesis"),
            stream_name=resources.EVENT_STREAM.local_name,
            function=self.stream_consumer,
            spec=self.esm_spec,
            on_failure=SqsDestination(session.client("sqs"), dlq_url),
            retry_backoff_s=self._retry_backoff,
            poll_interval_s=self._poll_interval,
        )
        mapping.start()
        self._mapping = mapping
        self._profile_mapping = self._start_profile_mapping(session)
        self.activation.start()
        self._start_schedules()
        self._ready.set()
        log.debug("local stack ready: API %s, AWS %s", self.api_url, self.aws_endpoint_url)

    def _start_profile_mapping(self, session: Any) -> DynamoDbEventSourceMapping:
        """The identity table's stream into the segment evaluator, as SEGMENT_EVALUATOR_ESM says."""
        assert self.provisioned is not None and self.segment_evaluator is not None
        self.segment_evaluator.warm_up()
        dlq_url = self.provisioned.queue_urls[resources.SEGMENT_EVALUATOR_DLQ.local_name]
        mapping = DynamoDbEventSourceMapping(
            streams=dynamodb_streams_client(session),
            stream_arn=latest_stream_arn(session.client("dynamodb"), resources.IDENTITY_TABLE.local_name),
            function=self.segment_evaluator,
            spec=local_dynamodb_spec(resources.SEGMENT_EVALUATOR_ESM),
            on_failure=SqsDestination(session.client("sqs"), dlq_url),
            retry_backoff_s=self._retry_backoff,
            poll_interval_s=self._poll_interval,
        )
        mapping.start()
        return mapping

    def _start_schedules(self) -> None:
        """The EventBridge rules of ``cdp.resources.SCHEDULES``, on the local periods."""
        assert self.segment_backfill is not None and self.segment_scheduler is not None
        functions = {resources.SEGMENT_BACKFILL_FUNCTION.logical_id: (self.segment_backfill, self._backfill_period),
                     resources.SEGMENT_SCHEDULER_FUNCTION.logical_id: (self.segment_scheduler,
                                                                        self._scheduler_period)}
        for spec in resources.SCHEDULES:
            function, period = functions[spec.function.logical_id]
            function.warm_up()
            schedule = LocalSchedule(spec.logical_id, function, period)
            schedule.start()
            self._schedules.append(schedule)

    @property
    def schedules(self) -> dict[str, LocalSchedule]:
        """The emulated schedule rules by logical id (``tick()`` invokes one now)."""
        return {schedule.rule_name: schedule for schedule in self._schedules}

    def stop(self) -> None:
        """Stop pollers, the HTTP API and moto, and restore the environment. Safe to call twice."""
        self._ready.clear()
        # First: a running backfill still needs moto to checkpoint and release its lease.
        for schedule in self._schedules:
            schedule.stop(timeout=self._backfill_timeout + 5)
        self._schedules = []
        if self.activation is not None:
            self.activation.stop()
            self.activation = None
        if self._profile_mapping is not None:
            self._profile_mapping.stop()
            self._profile_mapping = None
        if self._mapping is not None:
            self._mapping.stop()
            self._mapping = None
        if self._gateway is not None:
            self._gateway.stop()
            self._gateway = None
        if self._moto is not None:
            if self._moto.running:
                self._reset_moto()
                self._moto.stop()
            self._moto = None
        self._restore_env()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _reset_moto(self) -> None:
        request = urllib.request.Request(f"{self.aws_endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    # --- environment ----------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The variables a handler (or a shell running the AWS CLI) needs to use this stack."""
        env = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            **FAKE_CREDENTIALS,
            config.ENV_VARS["space_id"]: self.space,
            # Identity settings changed through the admin API apply within seconds locally
            # (a minute in the cloud).
            config.ENV_VARS["identity_config_cache_seconds"]: "2",
            # Audience and computed trait definitions too.
            config.ENV_VARS["segments_cache_seconds"]: "2",
            # The backfill starts 3 s after a spec's live_from (the local consumer is
            # never minutes behind; 15 minutes in the cloud).
            config.ENV_VARS["backfill_settle_seconds"]: "3",
            # Destination retries without a Retry-After back off from 1 s (5 s in the cloud).
            config.ENV_VARS["retry_base_seconds"]: "1",
        }
        specs: list[TableSpec | StreamSpec | BucketSpec | QueueSpec] = [
            *resources.TABLES, *resources.STREAMS, *resources.BUCKETS, *resources.QUEUES]
        for spec in specs:
            env[spec.env] = spec.local_name
        env[resources.ACTIVATION_ROUTER_DLQ.env] = resources.ACTIVATION_ROUTER_DLQ.local_name
        env[resources.DESTINATIONS_FILE_ENV] = str(self._destinations_file)
        env[resources.DESTINATION_QUEUE_PREFIX_ENV] = resources.LOCAL_DESTINATION_QUEUE_PREFIX
        env[config.ENV_VARS["destination_types"]] = destination_types_text(self._destinations)
        env.update(self._extra_env)
        return env

    def _apply_env(self) -> None:
        # A profile would win over the fake credentials; moto must never see real ones.
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            self._saved_env.setdefault(name, os.environ.pop(name, None))
        for name, value in self.environment().items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        _reset_cached_clients()

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        _reset_cached_clients()

    def session(self) -> boto3.session.Session:
        """A boto3 session bound to this stack's moto (whatever the process environment says)."""
        return _EndpointSession(self.aws_endpoint_url)

    def _seed_source(self, session: Any) -> None:
        table = session.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
        if "Item" in table.get_item(Key={"key_hash": hash_write_key(self.write_key)}):
            return
        SourceRegistry(table).create_source(LOCAL_SOURCE_NAME, write_key=self.write_key,
                                            source_id=LOCAL_SOURCE_ID)

    def _seed_access_token(self, session: Any) -> None:
        table = session.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
        if "Item" in table.get_item(Key={"key_hash": access_token_key(self.access_token)}):
            return
        # Locally the printed token may also use the admin API (identity settings).
        AccessTokenRegistry(table).create_token(LOCAL_TOKEN_NAME, self.space, token=self.access_token,
                                                token_id=LOCAL_TOKEN_ID, scope="admin")

    # --- what callers need ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def port(self) -> int:
        if self._gateway is None:
            raise RuntimeError("stack not started")
        return self._gateway.port

    @property
    def aws_port(self) -> int:
        if self._moto is None:
            raise RuntimeError("stack not started")
        return int(self._moto.get_host_and_port()[1])

    @property
    def api_url(self) -> str:
        if self._gateway is None:
            raise RuntimeError("stack not started")
        return self._gateway.url

    @property
    def aws_endpoint_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.aws_port}"

    @property
    def mapping(self) -> KinesisEventSourceMapping:
        if self._mapping is None:
            raise RuntimeError("stack not started")
        return self._mapping

    @property
    def profile_mapping(self) -> DynamoDbEventSourceMapping:
        """The identity table's stream mapping into the segment evaluator."""
        if self._profile_mapping is None:
            raise RuntimeError("stack not started")
        return self._profile_mapping

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every record on the event stream and on the identity table's stream has
        been delivered (or discarded or filtered out).

        The two feed each other (a profile change emits audience events, which change
        profiles), so both are drained until a round in which neither delivered anything.
        """
        deadline = time.monotonic() + timeout
        activation = self.activation

        def counts() -> tuple[int, int, int]:
            return (self.mapping.stats.invocations, self.profile_mapping.stats.invocations,
                    activation.invocations() if activation is not None else 0)

        while True:
            before = counts()
            for mapping in (self.mapping, self.profile_mapping):
                if not mapping.wait_idle(max(0.0, deadline - time.monotonic())):
                    return False
            if activation is not None and not activation.wait_idle(max(0.0, deadline - time.monotonic())):
                return False
            if counts() == before:
                return True
            if time.monotonic() >= deadline:
                return False


def local_dynamodb_spec(spec: DynamoDbStreamEventSourceSpec) -> DynamoDbEventSourceSpec:
    """The emulated mapping's settings from the deployed one's (one batch per shard: factor 1)."""
    if spec.parallelization_factor != 1:
        raise ValueError("the local DynamoDB Streams mapping runs one batch per shard (parallelization 1)")
    return DynamoDbEventSourceSpec(
        batch_size=spec.batch_size, max_batching_window_s=spec.max_batching_window_s,
        starting_position=spec.starting_position, bisect_batch_on_error=spec.bisect_batch_on_error,
        retry_attempts=spec.retry_attempts, max_record_age_s=spec.max_record_age_s,
        report_batch_item_failures=spec.report_batch_item_failures, filter_patterns=spec.filter_patterns)


class _EndpointSession(boto3.session.Session):
    """A boto3 session whose clients and resources always use one endpoint and fake keys."""

    def __init__(self, endpoint_url: str) -> None:
        super().__init__(aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                         aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
                         region_name=REGION)
        self._endpoint_url = endpoint_url

    def client(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("endpoint_url", self._endpoint_url)
        return super().client(*args, **kwargs)

    def resource(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("endpoint_url", self._endpoint_url)
        return super().resource(*args, **kwargs)


def _reset_cached_clients() -> None:
    """Forget boto3 clients the handlers' adapters cached for another endpoint."""
    try:
        from cdp.aws import clients
    except ImportError:
        return
    reset = getattr(clients, "reset", None)
    if callable(reset):
        reset()
    config.get_settings.cache_clear()
