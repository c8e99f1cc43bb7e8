"""Fault injection for a webhook destination: the real destination function behind the
emulated SQS FIFO -> Lambda mapping (batch 10, partial batch responses, concurrency 2) on
moto's server, delivering to a receiver scripted over time.

The receiver first refuses connections (its port is bound but not listening), then
answers 500, then 429 with ``Retry-After: 1``, then hangs past the webhook's timeout, then
recovers. Every message must then have been accepted exactly once (by ``Idempotency-Key``),
in the order sent per profile, with nothing left on the queue or the dead-letter queue.
A permanent 400 goes to the dead-letter queue with its reason, the profile's later
messages go on, and a redrive delivers it with its original ``Idempotency-Key``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.activation import webhook
from cdp.activation.destinations import DestinationConfig, destinations_document
from cdp.activation.router import MembershipChange, Routed, route_change
from cdp.activation.webhook_signing import SIGNATURE_HEADER, verify
from cdp.aws import clients
from cdp.aws.destination_admin import DestinationQueuesOf, depths, peek_dead_letters, redrive
from cdp.config import get_settings
from cdp.local.activation import queue_attributes, store_secrets
from cdp.local.functions import LocalFunction
from cdp.local.provisioning import ensure_table
from cdp.local.sqs_esm import SqsEventSourceMapping, SqsEventSourceSpec
from cdp.segmentation.membership import Transition
from tests.profile_layout import moto_writer

DESTINATION = "fault-hooks"
PREFIX = "fault-dest-"
SECRET_NAME = "cdp/webhooks/fault"
SECRET = "whsec-fault-injection"
AUDIENCE = "vip"
WEBHOOK_TIMEOUT_S = 1.5  # the client's (10 s deployed); the receiver hangs longer
HANG_S = 2.0
TRANSITIONS: tuple[Transition, ...] = ("entered", "exited", "entered")  # versions 1, 2, 3 of every profile


# --- the scripted receiver -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() on arrival
    answered_at: float  # when the answer was written (or, hung, the connection closed)
    key: str  # Idempotency-Key
    body: dict[str, Any]
    raw: bytes
    signature: str
    status: int  # what it answered; 0: hung, then closed without an answer

    @property
    def profile_id(self) -> str:
        return str(self.body["profile_id"])


@dataclass
class Phase:
    """An answer given to every request until ``min_s`` have passed since the phase's first
    request and ``min_requests`` were answered (so each fault is really met)."""

    status: int  # 0: hang past the client's timeout, then close without answering
    headers: dict[str, str]
    min_s: float
    min_requests: int


class ScriptedWebhook:
    """A webhook endpoint on a port reserved at once but listened on only when ``listen()``
    is called (until then connections are refused); then it goes through ``phases`` and
    answers 200 after them. ``refuse(key)`` makes that message's first request a 400."""

    def __init__(self, phases: list[Phase] | None = None) -> None:
        self.requests: list[Request] = []
        self._phases = list(phases or [])
        self._phase_started: float | None = None
        self._phase_count = 0
        self._refused_once: set[str] = set()
        self._to_refuse: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                status, headers = receiver._answer(key)
                if status == 0:
                    time.sleep(HANG_S)  # the client has given up by now
                    self.close_connection = True
                else:
                    answer = b"ok" if status < 300 else b"invalid_payload"
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    self.wfile.flush()
                with receiver._lock:
                    receiver.requests.append(Request(arrived, time.monotonic(), key, json.loads(raw), raw,
                                                     self.headers.get(SIGNATURE_HEADER, ""), status))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.server_bind()  # the port is ours; nothing listens on it yet: refused
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def listen(self) -> None:
        self._server.server_activate()
        self._thread.start()

    def refuse(self, key: str) -> None:
        with self._lock:
            self._to_refuse.add(key)

    def _answer(self, key: str) -> tuple[int, dict[str, str]]:
        with self._lock:
            if key in self._to_refuse and key not in self._refused_once:
                self._refused_once.add(key)
                return 400, {}
            if not self._phases:
                return 200, {}
            phase = self._phases[0]
            now = time.monotonic()
            if self._phase_started is None:
                self._phase_started = now
            self._phase_count += 1
            if self._phase_count >= phase.min_requests and now - self._phase_started >= phase.min_s:
                self._phases.pop(0)
                self._phase_started, self._phase_count = None, 0
            return phase.status, phase.headers

    def accepted(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(r.status for r in self.requests)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


# --- the destination on moto ---------------------------------------------------------------


@dataclass
class Deployment:
    sqs: Any
    queue_url: str
    dead_letter_url: str
    function: LocalFunction
    mapping: SqsEventSourceMapping | None = None

    def start(self) -> SqsEventSourceMapping:
        self.mapping = SqsEventSourceMapping(
            sqs=self.sqs, queue_url=self.queue_url, function=self.function, poll_interval_s=0.05,
            spec=SqsEventSourceSpec(batch_size=10, report_batch_item_failures=True, max_concurrency=2))
        self.mapping.start()
        return self.mapping

    def delivery_log(self) -> dict[str, Any]:
        """The destination's delivery log counters, summed over its hours, and the last error."""
        table: Any = boto3.resource("dynamodb").Table(resources.DELIVERY_LOG_TABLE.local_name)
        items = sorted((i for i in table.scan()["Items"] if i["destination_id"] == DESTINATION),
                       key=lambda i: str(i["hour"]))
        totals: dict[str, Any] = {name: sum(int(i.get(name, 0)) for i in items)
                                  for name in ("attempts", "delivered", "retried", "dead_lettered", "held")}
        totals["last_error"] = str(items[-1].get("last_error", "")) if items else ""
        return totals

    def dead_letter_depth(self) -> int:
        return sum(depths(self.sqs, self.dead_letter_url).values())


def _reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@pytest.fixture
def deploy(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Callable[[str], Deployment]]:
    """``deploy(url)``: the tables the destination function reads and writes, its FIFO queue
    and dead-letter queue (deployed attributes), its signing secret, and the function
    (a fresh one: nothing cached from another test), on a freshly reset moto server."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every call
    _reset_moto(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for spec in resources.TABLES:
        monkeypatch.setenv(spec.env, spec.local_name)
    monkeypatch.setenv(resources.DESTINATION_QUEUE_PREFIX_ENV, PREFIX)
    monkeypatch.delenv(resources.DESTINATION_ID_ENV, raising=False)
    monkeypatch.setenv("CDP_RETRY_BASE_SECONDS", "0.2")
    # The webhook's 10 s timeout, shortened so that hanging costs fractions of a second.
    built = webhook.build

    def build_with_short_timeout(config: Any, secret: Any, aws: Any) -> webhook.WebhookDestination:
        return dataclasses.replace(built(config, secret, aws), timeout_s=WEBHOOK_TIMEOUT_S, http=None)

    monkeypatch.setattr(webhook, "build", build_with_short_timeout)
    clients.reset()
    get_settings.cache_clear()
    made: list[Deployment] = []

    def make(url: str) -> Deployment:
        config = webhook_config(url)
        destinations_file = tmp_path / resources.DESTINATIONS_FILE
        destinations_file.write_text(destinations_document([config]), encoding="utf-8")
        monkeypatch.setenv(resources.DESTINATIONS_FILE_ENV, str(destinations_file))
        get_settings.cache_clear()
        assert get_settings().retry_base_seconds == 0.2
        session = boto3.session.Session()
        ddb = session.client("dynamodb")
        for spec in (resources.IDENTITY_TABLE, resources.EVENTS_TABLE, resources.MEMBERSHIPS_TABLE,
                     resources.DELIVERY_LOG_TABLE):
            ensure_table(ddb, spec)
        sqs: Any = session.client("sqs")
        dlq_url = str(sqs.create_queue(
            QueueName=resources.destination_queue_name(PREFIX, DESTINATION, "webhook", dead_letter=True),
            Attributes=queue_attributes(config, None))["QueueUrl"])
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = str(sqs.create_queue(QueueName=resources.destination_queue_name(PREFIX, DESTINATION, "webhook"),
                                         Attributes=queue_attributes(config, dlq_arn))["QueueUrl"])
        store_secrets(session, {SECRET_NAME: SECRET})
        function = LocalFunction.from_spec(resources.DESTINATION_FUNCTION, max_concurrency=2,
                                           name=f"cdp-destination-{DESTINATION}")
        deployment = Deployment(sqs, queue_url, dlq_url, function)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        if deployment.mapping is not None:
            deployment.mapping.stop()
    clients.reset()
    get_settings.cache_clear()


def webhook_config(url: str) -> DestinationConfig:
    return DestinationConfig.model_validate({
        "id": DESTINATION, "name": "Fault injection", "type": "webhook", "audiences": [AUDIENCE],
        "settings": {"url": url, "secret_name": SECRET_NAME}})


def write_profiles(profile_ids: list[str]) -> None:
    writer = moto_writer()
    for pid in profile_ids:
        writer.profile(pid, [f"user_id:{pid}", f"email:{pid}@example.com"],
                       traits={"plan": ("pro", "2026-12-01T10:00:00.000Z", f"m-{pid}")})


def routed_changes(profile_ids: list[str], seed: int) -> list[Routed]:
    """Each profile's entry (v1), exit (v2) and entry (v3) as the router puts them on the
    queue, the profiles' sequences interleaved at random (each one's own order kept)."""
    config = webhook_config("http://127.0.0.1/unused")
    pending = {pid: [route_change(MembershipChange(pid, AUDIENCE, transition, version, "2026-12-06T12:00:00.000Z"),
                                  [config]).messages[0]
                     for version, transition in enumerate(TRANSITIONS, start=1)] for pid in profile_ids}
    rng = random.Random(seed)
    ordered: list[Routed] = []
    while pending:
        pid = rng.choice(sorted(pending))
        ordered.append(pending[pid].pop(0))
        if not pending[pid]:
            del pending[pid]
    return ordered


def send_batch(sqs: Any, queue_url: str, messages: list[Routed]) -> None:
    """``SendMessageBatch``, 10 at a time, as the router's sender does."""
    for start in range(0, len(messages), 10):
        entries = [{"Id": str(n), "MessageBody": json.dumps(m.body, separators=(",", ":")),
                    "MessageGroupId": m.message_group_id, "MessageDeduplicationId": m.deduplication_id}
                   for n, m in enumerate(messages[start:start + 10])]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not response.get("Failed"), response


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def versions_by_profile(requests: list[Request]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for request in sorted(requests, key=lambda r: r.at):
        found.setdefault(request.profile_id, []).append(int(request.body["version"]))
    return found


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[ScriptedWebhook]:
    scripted = ScriptedWebhook([
        Phase(500, {}, min_s=1.0, min_requests=5),
        Phase(429, {"Retry-After": "1"}, min_s=1.0, min_requests=5),
        Phase(0, {}, min_s=0.5, min_requests=3),
    ])
    yield scripted
    scripted.stop()


def test_an_outage_of_refusals_500s_429s_and_timeouts_ends_with_every_message_delivered_once_in_order(
        deploy: Callable[[str], Deployment], receiver: ScriptedWebhook) -> None:
    deployment = deploy(receiver.url)
    profiles = [f"prof_fault_{n:02d}" for n in range(20)]
    write_profiles(profiles)
    sent = routed_changes(profiles, seed=5)
    assert len(sent) == 60
    send_batch(deployment.sqs, deployment.queue_url, sent)
    started = time.monotonic()

    mapping = deployment.start()
    # Nothing listens yet: the first batch meets refused connections, which are retried.
    wait_until(lambda: mapping.stats.invocations >= 1, timeout=10)
    refused = deployment.delivery_log()
    assert refused["delivered"] == 0 and refused["retried"] >= 1, refused
    assert str(refused["last_error"]).startswith("no answer: "), refused
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    receiver.listen()

    assert mapping.wait_drained(timeout=90), (mapping.stats, receiver.statuses())
    elapsed = time.monotonic() - started

    statuses = receiver.statuses()
    assert statuses[500] >= 5 and statuses[429] >= 5 and statuses[0] >= 3, statuses  # every fault was met
    accepted = receiver.accepted()
    keys = Counter(r.key for r in accepted)
    assert not [k for k, n in keys.items() if n > 1], "accepted twice"
    assert set(keys) == {m.deduplication_id for m in sent}  # every message, once
    assert all(r.key == r.body["message_id"] for r in accepted)
    assert all(verify(r.signature, r.raw, [SECRET.encode()], now=time.time()) for r in accepted)
    assert all(r.body["profile"]["profile_id"] == r.profile_id for r in accepted)  # the profile was read
    # In order per profile: an exit never before its entry, whatever was retried.
    assert versions_by_profile(accepted) == {pid: [1, 2, 3] for pid in profiles}
    # A 429's Retry-After (1 s) was waited out before the message was tried again. (Only
    # answers written well within the client's timeout count: a stalled receiver thread's
    # 429 may never have reached the client, which then backed off on its own.)
    with receiver._lock:
        attempts = sorted(receiver.requests, key=lambda r: r.at)
    checked = 0
    for n, request in enumerate(attempts):
        if request.status == 429 and request.answered_at - request.at < WEBHOOK_TIMEOUT_S / 2:
            following = next(r for r in attempts[n + 1:] if r.key == request.key)
            assert following.at - request.answered_at >= 0.95, (request, following)
            checked += 1
    assert checked >= 1

    assert mapping.queue_depth() == 0 and deployment.dead_letter_depth() == 0
    log = deployment.delivery_log()
    assert log["delivered"] == 60 and log["retried"] > 0 and log["dead_lettered"] == 0, log
    print(f"60 messages through the outage in {elapsed:.1f} s; answers {dict(statuses)}; log {log}; "
          f"mapping {mapping.stats}")


def test_a_permanent_400_is_dead_lettered_the_profiles_later_messages_go_on_and_a_redrive_delivers_it(
        deploy: Callable[[str], Deployment]) -> None:
    receiver = ScriptedWebhook()
    try:
        receiver.listen()
        deployment = deploy(receiver.url)
        profiles = [f"prof_refused_{n}" for n in range(4)]
        write_profiles(profiles)
        sent = routed_changes(profiles, seed=7)
        refused = next(m for m in sent if m.body["profile_id"] == profiles[0] and m.body["version"] == 1)
        receiver.refuse(refused.deduplication_id)
        send_batch(deployment.sqs, deployment.queue_url, sent)
        mapping = deployment.start()

        assert mapping.wait_drained(timeout=30), mapping.stats
        (letter,) = peek_dead_letters(deployment.sqs, deployment.dead_letter_url)
        assert letter.reason.startswith("permanent failure: HTTP 400"), letter
        assert letter.body["message_id"] == refused.body["message_id"]
        # The refused entry does not hold the profile: its exit (v2) and entry (v3) go on,
        # in order; every other profile is untouched.
        assert versions_by_profile(receiver.accepted()) == {
            pid: [2, 3] if pid == profiles[0] else [1, 2, 3] for pid in profiles}

        moved = redrive(deployment.sqs, DestinationQueuesOf(DESTINATION, deployment.queue_url,
                                                             deployment.dead_letter_url))
        assert moved == 1
        assert mapping.wait_drained(timeout=30), mapping.stats
        # Delivered after the later changes it preceded: what order means after a dead
        # letter. Its version (1, below the delivered 3) tells the receiver it is older, and
        # it keeps the key it had, so a receiver that did take it once drops it.
        delivered = [r for r in receiver.accepted() if r.key == refused.deduplication_id]
        assert len(delivered) == 1 and delivered[0].body["message_id"] == refused.body["message_id"]
        assert versions_by_profile(receiver.accepted())[profiles[0]] == [2, 3, 1]
        attempts = [r for r in receiver.requests if r.key == refused.deduplication_id]
        assert [r.status for r in attempts] == [400, 200]
        assert len(receiver.accepted()) == len(sent)
        assert mapping.queue_depth() == 0 and deployment.dead_letter_depth() == 0
        log = deployment.delivery_log()
        assert (log["delivered"], log["dead_lettered"]) == (len(sent), 1), log
    finally:
        receiver.stop()
