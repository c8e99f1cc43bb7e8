"""Counts the AWS requests our code makes and what DynamoDB, Kinesis and S3 bill for them.

Every botocore client created after ``AwsMeter.install()`` (any session: the handlers
build theirs with ``boto3.session.Session().client``) gets three event hooks:

- ``before-call``: one per API call; keeps the serialised request body (the bytes that
  go on the wire, so resource-level conversions cannot hide anything) and the thread
  that made the call;
- ``before-send``: one per HTTP attempt, so retries would show up;
- ``after-call``: the HTTP status (a failed condition is a 400 and still billed) and,
  for DynamoDB reads and BatchWriteItem, the raw response body.

The hooks only append to lists; the analysis runs in ``settle()``, which the
benchmark calls outside the timed region, so the meter costs the handlers nearly
nothing. Requests are attributed to the current ``phase`` (None: not recorded).
Calls may come from several threads at once (the consumer claimed from a thread pool
in 6d330bc): ``after-call`` finds its call through botocore's per-call ``context``
dict, never by position.

DynamoDB request units are computed by DynamoDB's published rules (on-demand mode),
never taken from moto's ``ConsumedCapacity``; see ``DynamoCapacity``.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import botocore.session

from cdp.resources import TableSpec

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
KINESIS_PUT_PAYLOAD_UNIT_BYTES = 25 * 1024
KINESIS_ON_DEMAND_ROUNDING_BYTES = 1024
DYNAMODB_READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}


# --- DynamoDB item size -------------------------------------------------------------


def number_size(text: str) -> int:
    """About 1 byte per two significant digits, plus 1."""
    digits = text.lstrip("-+").lower().split("e", 1)[0].replace(".", "").strip("0")
    return (max(len(digits), 1) + 1) // 2 + 1


def value_size(value: dict[str, Any]) -> int:
    """Size of one attribute value in DynamoDB JSON (``{"S": "..."}``) form."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "N":
        return number_size(inner)
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode("utf-8")) for s in inner)
    if kind == "NS":
        return sum(number_size(n) for n in inner)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in inner)
    if kind == "M":
        return 3 + sum(len(k.encode("utf-8")) + value_size(v) + 1 for k, v in inner.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in inner)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: dict[str, dict[str, Any]]) -> int:
    """Attribute name lengths plus value sizes."""
    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int) -> int:
    return max(1, math.ceil(size / READ_UNIT_BYTES))


@dataclass
class _Stored:
    size: int
    index_keys: tuple[Any, ...]


@dataclass
class UnitTally:
    calls: int = 0
    items: int = 0
    units: float = 0.0
    bytes: int = 0
    refused: int = 0  # items of calls that failed (e.g. a condition): billed all the same


class DynamoCapacity:
    """Request units by DynamoDB's rules, with a shadow of every item size written.

    The shadow (size of each item the meter saw written, per table and key) gives the
    "larger of the old and the new item" rule for puts and deletes, and full item sizes
    for reads (DynamoDB charges the whole item even with a projection). Items written
    before the meter was installed are unknown: the response's item is used for reads,
    and a put over such an item is costed on the new item only.
    """

    def __init__(self, tables: Iterable[TableSpec]) -> None:
        self._keys = {t.local_name: (t.partition_key.name, t.sort_key.name if t.sort_key else None) for t in tables}
        self._indexes = {
            t.local_name: [(i.partition_key.name, i.sort_key.name if i.sort_key else None) for i in t.indexes]
            for t in tables
        }
        self._items: dict[tuple[str, Any, Any], _Stored] = {}
        # (phase, table, operation) -> units
        self.writes: dict[tuple[str, str, str], UnitTally] = defaultdict(UnitTally)
        self.reads: dict[tuple[str, str, str], UnitTally] = defaultdict(UnitTally)
        self.unsupported: Counter[str] = Counter()

    def forget(self) -> None:
        self._items.clear()

    # --- keys and index entries ------------------------------------------------------

    def _key(self, table: str, item: dict[str, Any]) -> tuple[str, Any, Any]:
        pk, sk = self._keys.get(table, (None, None))
        if pk is None:  # a table we do not know: key by the whole key map given
            return (table, json.dumps(item, sort_keys=True), None)
        return (table, json.dumps(item.get(pk)), json.dumps(item.get(sk)) if sk else None)

    def _index_keys(self, table: str, item: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            (json.dumps(item.get(pk)), json.dumps(item.get(sk)) if sk else None)
            if pk in item and (sk is None or sk in item)
            else None
            for pk, sk in self._indexes.get(table, [])
        )

    def _index_writes(self, table: str, old: _Stored | None, new_size: int, new_keys: tuple[Any, ...]) -> int:
        """Each GSI that receives the item costs its own write (projection ALL: item size);
        an update that changes the index key costs a delete plus a put on the index."""
        units = 0
        old_keys = old.index_keys if old else tuple(None for _ in new_keys)
        for before, after in zip(old_keys, new_keys, strict=True):
            if after is not None:
                units += write_units(new_size)
            if before is not None and before != after:
                units += write_units(old.size if old else 0)
        return units

    # --- writes ------------------------------------------------------------------------

    def _put(self, table: str, item: dict[str, Any], apply: bool) -> tuple[int, int]:
        key = self._key(table, item)
        old = self._items.get(key)
        size = item_size(item)
        index_keys = self._index_keys(table, item)
        units = write_units(max(size, old.size if old else 0))
        units += self._index_writes(table, old, size, index_keys)
        if apply:
            self._items[key] = _Stored(size, index_keys)
        return units, size

    def _delete(self, table: str, key_map: dict[str, Any], apply: bool) -> tuple[int, int]:
        key = self._key(table, key_map)
        old = self._items.get(key)
        size = old.size if old else 0
        units = write_units(size)
        if old:
            units += self._index_writes(table, old, 0, tuple(None for _ in old.index_keys))
        if apply:
            self._items.pop(key, None)
        return units, size

    def _record(
        self,
        bucket: dict[tuple[str, str, str], UnitTally],
        phase: str,
        table: str,
        operation: str,
        units: float,
        size: int,
        new_call: bool,
        refused: bool = False,
    ) -> None:
        tally = bucket[(phase, table, operation)]
        tally.calls += 1 if new_call else 0
        tally.items += 1
        tally.units += units
        tally.bytes += size
        tally.refused += 1 if refused else 0

    def request(
        self, phase: str, operation: str, body: dict[str, Any], status: int, response: dict[str, Any] | None
    ) -> None:
        """Account one API call (``body``: the request's DynamoDB JSON).

        A conditional PutItem / DeleteItem whose condition fails (HTTP 400,
        ConditionalCheckFailedException) consumes the same write units as one that
        succeeds (the larger of the stored and the new item), but changes nothing.
        """
        ok = status < 400
        if operation == "PutItem":
            units, size = self._put(body["TableName"], body["Item"], apply=ok)
            self._record(self.writes, phase, body["TableName"], operation, units, size, True, not ok)
        elif operation == "DeleteItem":
            units, size = self._delete(body["TableName"], body["Key"], apply=ok)
            self._record(self.writes, phase, body["TableName"], operation, units, size, True, not ok)
        elif operation == "BatchWriteItem":
            unprocessed = (response or {}).get("UnprocessedItems") or {}
            for table, requests in body["RequestItems"].items():
                skipped = {json.dumps(r, sort_keys=True) for r in unprocessed.get(table, [])}
                first = True
                for request in requests:
                    if json.dumps(request, sort_keys=True) in skipped:
                        continue  # not written, not charged; the caller retries it
                    if "PutRequest" in request:
                        units, size = self._put(table, request["PutRequest"]["Item"], apply=ok)
                    else:
                        units, size = self._delete(table, request["DeleteRequest"]["Key"], apply=ok)
                    self._record(self.writes, phase, table, operation, units, size, first)
                    first = False
        elif operation == "TransactWriteItems":
            # 2 write units per KB per item; a cancelled transaction still consumes them.
            seen_tables: set[str] = set()
            for entry in body["TransactItems"]:
                ((action, spec),) = entry.items()
                table = spec["TableName"]
                if action == "Put":
                    units, size = self._put(table, spec["Item"], apply=ok)
                elif action == "Delete":
                    units, size = self._delete(table, spec["Key"], apply=ok)
                else:  # Update / ConditionCheck: sized on the stored item (assumption)
                    self.unsupported[f"TransactWriteItems.{action}"] += 1
                    stored = self._items.get(self._key(table, spec["Key"]))
                    size = stored.size if stored else 0
                    units = write_units(size)
                self._record(self.writes, phase, table, operation, 2 * units, size, table not in seen_tables, not ok)
                seen_tables.add(table)
        elif operation == "UpdateItem":
            # Needs the item after the update; not used by the code benchmarked here.
            self.unsupported["UpdateItem"] += 1
            stored = self._items.get(self._key(body["TableName"], body["Key"]))
            size = stored.size if stored else 0
            self._record(self.writes, phase, body["TableName"], operation, write_units(size), size, True)
        elif operation in DYNAMODB_READS:
            self._read(phase, operation, body, response or {})

    # --- reads -------------------------------------------------------------------------

    def _stored_size(self, table: str, key_map: dict[str, Any], returned: dict[str, Any] | None) -> int:
        stored = self._items.get(self._key(table, key_map))
        if stored:
            return stored.size
        return item_size(returned) if returned else 0

    def _read(self, phase: str, operation: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        if operation == "GetItem":
            table = body["TableName"]
            size = self._stored_size(table, body["Key"], response.get("Item"))
            factor = 1.0 if body.get("ConsistentRead") else 0.5
            self._record(self.reads, phase, table, operation, read_units(size) * factor, size, True)
        elif operation == "BatchGetItem":
            for table, spec in body["RequestItems"].items():
                factor = 1.0 if spec.get("ConsistentRead") else 0.5
                returned = {self._key(table, item): item for item in response.get("Responses", {}).get(table, [])}
                first = True
                for key_map in spec["Keys"]:
                    item = returned.get(self._key(table, key_map))
                    size = self._stored_size(table, key_map, item)
                    self._record(self.reads, phase, table, operation, read_units(size) * factor, size, first)
                    first = False
        elif operation == "TransactGetItems":
            for entry in body["TransactItems"]:
                spec = entry["Get"]
                size = self._stored_size(spec["TableName"], spec["Key"], None)
                self._record(self.reads, phase, spec["TableName"], operation, 2 * read_units(size), size, True)
        else:  # Query / Scan: the total size read, rounded up once
            table = body["TableName"]
            size = sum(self._stored_size(table, item, item) for item in response.get("Items", []))
            factor = 1.0 if body.get("ConsistentRead") else 0.5
            self._record(self.reads, phase, table, operation, read_units(size) * factor, size, True)


# --- the hooks -------------------------------------------------------------------------


def payload_length(body: Any) -> int:
    """Bytes of a request payload: bytes, or a file-like object as botocore passes S3 bodies."""
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, str)):
        return len(body)
    if hasattr(body, "getbuffer"):
        return int(body.getbuffer().nbytes)
    if hasattr(body, "seek") and hasattr(body, "tell"):
        position = body.tell()
        body.seek(0, 2)
        size = int(body.tell())
        body.seek(position)
        return size
    return 0


@dataclass
class _Call:
    phase: str
    service: str
    operation: str
    body: Any
    thread: int = 0
    status: int = 0
    response: bytes | None = None


@dataclass
class KinesisTally:
    records: int = 0
    bytes: int = 0  # data + partition key
    put_payload_units: int = 0  # provisioned: 25 KB units, per record
    on_demand_bytes: int = 0  # on-demand: each record rounded up to 1 KB


@dataclass
class S3Tally:
    puts: int = 0
    put_bytes: int = 0
    other: int = 0


@dataclass
class AwsMeter:
    """Request counts per phase, service and operation, plus billing quantities."""

    tables: Iterable[TableSpec]
    phase: str | None = None
    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    attempts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    kinesis: dict[str, KinesisTally] = field(default_factory=lambda: defaultdict(KinesisTally))
    s3: dict[str, S3Tally] = field(default_factory=lambda: defaultdict(S3Tally))
    dynamodb: DynamoCapacity = field(init=False)
    _pending: list[_Call] = field(default_factory=list)
    _sent: list[tuple[str, str, str]] = field(default_factory=list)
    _installed: bool = False

    def __post_init__(self) -> None:
        self.dynamodb = DynamoCapacity(self.tables)

    # --- installation ------------------------------------------------------------------

    def install(self) -> None:
        """Hook every botocore client created from now on, whatever session creates it."""
        if self._installed:
            return
        meter = self
        original = botocore.session.Session.create_client

        def create_client(session: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            meter.attach(client)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign,assignment]
        self._installed = True

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-call", self._before_call)
        events.register("before-send", self._before_send)
        events.register("after-call", self._after_call)

    # Hooks must return None: a value returned from before-call/before-send replaces the request.

    # list.append is atomic under the GIL: the hooks need no lock, even from the pool threads.

    def _before_call(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if self.phase is None:
            return
        service = model.service_model.service_name
        body = params.get("body")
        # S3 bodies are streams: keep their length only.
        kept = payload_length(body) if service == "s3" else body
        call = _Call(self.phase, service, model.name, kept, threading.get_ident())
        context["bench_call"] = call
        self._pending.append(call)

    def _before_send(self, event_name: str, **_: Any) -> None:
        if self.phase is None:
            return
        _when, service, operation = event_name.split(".", 2)
        self._sent.append((self.phase, service, operation))

    def _after_call(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        call = context.get("bench_call")
        if not isinstance(call, _Call):
            return
        call.status = int(getattr(http_response, "status_code", 0) or 0)
        if call.service == "dynamodb" and (call.operation in DYNAMODB_READS or call.operation == "BatchWriteItem"):
            call.response = http_response.content

    # --- analysis (outside the timed region) --------------------------------------------

    @property
    def pending_calls(self) -> int:
        """API calls recorded since the last ``settle()``."""
        return len(self._pending)

    def pending_calls_off_thread(self, thread: int) -> tuple[int, int]:
        """Of those, the calls made from other threads than ``thread`` (the handler's, e.g.
        a thread pool running calls side by side), and how many threads made them."""
        others = [call.thread for call in self._pending if call.thread != thread]
        return len(others), len(set(others))

    def settle(self) -> None:
        pending, self._pending = self._pending, []
        sent, self._sent = self._sent, []
        for key in sent:
            self.attempts[key] += 1
        for call in pending:
            self.calls[(call.phase, call.service, call.operation)] += 1
            if call.service == "dynamodb":
                body = json.loads(call.body) if call.body else {}
                response = json.loads(call.response) if call.response else None
                self.dynamodb.request(call.phase, call.operation, body, call.status or 200, response)
            elif call.service == "kinesis" and call.operation in ("PutRecords", "PutRecord"):
                body = json.loads(call.body)
                tally = self.kinesis[call.phase]
                for record in body.get("Records", [body]):
                    size = len(base64.b64decode(record["Data"])) + len(record["PartitionKey"].encode("utf-8"))
                    tally.records += 1
                    tally.bytes += size
                    tally.put_payload_units += math.ceil(size / KINESIS_PUT_PAYLOAD_UNIT_BYTES)
                    tally.on_demand_bytes += (
                        math.ceil(size / KINESIS_ON_DEMAND_ROUNDING_BYTES) * KINESIS_ON_DEMAND_ROUNDING_BYTES
                    )
            elif call.service == "s3":
                if call.operation == "PutObject":
                    self.s3[call.phase].puts += 1
                    self.s3[call.phase].put_bytes += int(call.body or 0)
                else:
                    self.s3[call.phase].other += 1

    def clear_tallies(self) -> None:
        """Forget every count (after the warm-up), keeping the item shadow."""
        self.calls.clear()
        self.attempts.clear()
        self.kinesis.clear()
        self.s3.clear()
        self.dynamodb.writes.clear()
        self.dynamodb.reads.clear()
        self.dynamodb.unsupported.clear()

    def reset_shadow(self) -> None:
        """After moto is reset: every table is empty again."""
        self.dynamodb.forget()

    def calls_of(self, phase: str) -> dict[tuple[str, str], int]:
        return {(s, o): n for (p, s, o), n in sorted(self.calls.items()) if p == phase}

    def attempts_of(self, phase: str) -> dict[tuple[str, str], int]:
        return {(s, o): n for (p, s, o), n in sorted(self.attempts.items()) if p == phase}
