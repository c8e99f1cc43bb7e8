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
from collections.abc import Iterable, Iterator
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


def item_kind(key: dict[str, Any], key_names: tuple[str | None, str | None]) -> str:
    """What kind of item a key names, from the prefixes of its key values: ``ident#`` /
    ``prof#`` / ``acct#`` in the identity table; ``u#``, ``a#`` (history) and ``p#merge#``
    (merge log) in the events table; ``*`` where the key has no such prefix."""
    parts = []
    for name in key_names:
        value = key.get(name, {}).get("S") if name else None
        if not isinstance(value, str):
            continue
        prefix, hash_sign, _ = value.partition("#")
        if hash_sign and prefix.isalpha() and len(prefix) <= 8:
            parts.append(prefix + "#")
    return "".join(parts) or "*"


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int) -> int:
    return max(1, math.ceil(size / READ_UNIT_BYTES))


@dataclass
class _Stored:
    size: int
    index_keys: tuple[Any, ...]
    item: dict[str, Any] | None = None  # DynamoDB JSON; the input of the next update


class UpdateNotModelled(Exception):
    """An update expression the meter cannot apply (the report says so)."""


def updated_item(
    item: dict[str, Any] | None,
    key_map: dict[str, Any],
    key_names: tuple[str, ...],
    expression: str,
    names: dict[str, str] | None,
    values: dict[str, Any] | None,
) -> dict[str, Any]:
    """The item after ``UpdateItem``: ``item`` (None: not there yet) with ``expression`` applied.

    Uses moto's parser and executor in this process (the same code the moto server runs),
    on a copy: the update expression language (SET with ``+``/``-``, ``if_not_exists``,
    ``list_append``, nested paths; REMOVE; ADD; DELETE) is moto's to keep right.
    """
    from types import SimpleNamespace

    from moto.dynamodb.models.dynamo_type import DynamoType, Item
    from moto.dynamodb.parsing.executors import UpdateExpressionExecutor
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
    from moto.dynamodb.parsing.validators import UpdateExpressionValidator

    attrs = json.loads(json.dumps(item if item is not None else key_map))
    target = Item(DynamoType(attrs[key_names[0]]), None, attrs)
    # The validator reads the key attributes of the table (they may not be updated).
    table: Any = SimpleNamespace(table_key_attrs=list(key_names), attr=[], attribute_keys=list(key_names))
    try:
        tree = UpdateExpressionParser.make(expression)
        validated = UpdateExpressionValidator(
            tree,
            expression_attribute_names=names or {},
            expression_attribute_values=values or {},
            item=target,
            table=table,
        ).validate()
        validated.normalize()
        UpdateExpressionExecutor(validated, target, names or {}).execute()
    except Exception as exc:  # moto's parse and validation errors have no common base
        raise UpdateNotModelled(f"{type(exc).__name__}: {exc}") from exc
    return dict(target.to_json()["Attributes"])


@dataclass
class UnitTally:
    calls: int = 0
    items: int = 0
    units: float = 0.0
    bytes: int = 0
    refused: int = 0  # items of calls that failed (e.g. a condition): billed all the same


class DynamoCapacity:
    """Request units by DynamoDB's rules, with a shadow of every item written.

    The shadow (each item the meter saw written, per table and key) gives the "larger
    of the old and the new item" rule for puts, deletes and updates (an update's new
    item is the shadow item with the update expression applied), and full item sizes
    for reads (DynamoDB charges the whole item even with a projection). Items written
    before the meter was installed are unknown: the response's item is used for reads,
    and a put or update over such an item is costed on the new item only.
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
        # The same split further by the kind of item (``item_kind``): (phase, table, operation, kind).
        self.write_kinds: dict[tuple[str, str, str, str], UnitTally] = defaultdict(UnitTally)
        self.read_kinds: dict[tuple[str, str, str, str], UnitTally] = defaultdict(UnitTally)
        # What was approximated, and why (the report lists it).
        self.unsupported: Counter[str] = Counter()

    def forget(self) -> None:
        self._items.clear()

    def stored_items(self, table: str) -> Iterator[dict[str, Any]]:
        """Every item of ``table`` as the meter last saw it written (DynamoDB JSON)."""
        for (name, _, _), stored in self._items.items():
            if name == table and stored.item is not None:
                yield stored.item

    # --- keys and index entries ------------------------------------------------------

    def _key(self, table: str, item: dict[str, Any]) -> tuple[str, Any, Any]:
        pk, sk = self._keys.get(table, (None, None))
        if pk is None:  # a table we do not know: key by the whole key map given
            return (table, json.dumps(item, sort_keys=True), None)
        return (table, json.dumps(item.get(pk)), json.dumps(item.get(sk)) if sk else None)

    def _key_names(self, table: str, key_map: dict[str, Any]) -> tuple[str, ...]:
        pk, sk = self._keys.get(table, (None, None))
        return tuple(n for n in (pk, sk) if n) if pk else tuple(key_map)

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
        return self._replace(table, self._key(table, item), item, apply)

    def _replace(self, table: str, key: tuple[str, Any, Any], item: dict[str, Any], apply: bool) -> tuple[int, int]:
        """The stored item at ``key`` becomes ``item``: units of the larger of the two, plus
        the indexes; returns the units and the new item's size."""
        old = self._items.get(key)
        size = item_size(item)
        index_keys = self._index_keys(table, item)
        units = write_units(max(size, old.size if old else 0))
        units += self._index_writes(table, old, size, index_keys)
        if apply:
            self._items[key] = _Stored(size, index_keys, item)
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

    def _update(self, table: str, spec: dict[str, Any], apply: bool, operation: str) -> tuple[int, int]:
        """UpdateItem (alone or in a transaction): the larger of the item before and after.

        Returns the units and the size of the item after the update.
        """
        key = self._key(table, spec["Key"])
        old = self._items.get(key)
        expression = spec.get("UpdateExpression")
        if not expression:  # legacy AttributeUpdates: not modelled, sized on the stored item
            self.unsupported[f"{operation} without UpdateExpression (sized on the stored item)"] += 1
            size = old.size if old else 0
            return write_units(size), size
        try:
            new = updated_item(
                old.item if old else None,
                spec["Key"],
                self._key_names(table, spec["Key"]),
                expression,
                spec.get("ExpressionAttributeNames"),
                spec.get("ExpressionAttributeValues"),
            )
        except UpdateNotModelled as exc:
            self.unsupported[f"{operation}: {exc} (sized on the stored item)"] += 1
            size = old.size if old else 0
            return write_units(size), size
        return self._replace(table, key, new, apply)

    def _condition_check(self, table: str, key_map: dict[str, Any]) -> tuple[int, int]:
        """A transaction's ConditionCheck is billed as a write of the item it checks
        (2 units per KB in the transaction, at least 1 KB), and changes nothing."""
        stored = self._items.get(self._key(table, key_map))
        size = stored.size if stored else 0
        return write_units(size), size

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
        key: dict[str, Any] | None = None,
    ) -> None:
        kinds = self.write_kinds if bucket is self.writes else self.read_kinds
        kind = item_kind(key, self._keys.get(table, (None, None))) if key is not None else "?"
        for tally in (bucket[(phase, table, operation)], kinds[(phase, table, operation, kind)]):
            tally.calls += 1 if new_call else 0
            tally.items += 1
            tally.units += units
            tally.bytes += size
            tally.refused += 1 if refused else 0

    def request(
        self, phase: str, operation: str, body: dict[str, Any], status: int, response: dict[str, Any] | None
    ) -> None:
        """Account one API call (``body``: the request's DynamoDB JSON).

        A conditional PutItem / UpdateItem / DeleteItem whose condition fails (HTTP 400,
        ConditionalCheckFailedException) consumes the same write units as one that
        succeeds (the larger of the stored and the new item), but changes nothing.
        """
        ok = status < 400
        if operation == "PutItem":
            units, size = self._put(body["TableName"], body["Item"], apply=ok)
            self._record(self.writes, phase, body["TableName"], operation, units, size, True, not ok, body["Item"])
        elif operation == "DeleteItem":
            units, size = self._delete(body["TableName"], body["Key"], apply=ok)
            self._record(self.writes, phase, body["TableName"], operation, units, size, True, not ok, body["Key"])
        elif operation == "UpdateItem":
            units, size = self._update(body["TableName"], body, apply=ok, operation=operation)
            self._record(self.writes, phase, body["TableName"], operation, units, size, True, not ok, body["Key"])
        elif operation == "BatchWriteItem":
            unprocessed = (response or {}).get("UnprocessedItems") or {}
            for table, requests in body["RequestItems"].items():
                skipped = {json.dumps(r, sort_keys=True) for r in unprocessed.get(table, [])}
                first = True
                for request in requests:
                    if json.dumps(request, sort_keys=True) in skipped:
                        continue  # not written, not charged; the caller retries it
                    if "PutRequest" in request:
                        key = request["PutRequest"]["Item"]
                        units, size = self._put(table, key, apply=ok)
                    else:
                        key = request["DeleteRequest"]["Key"]
                        units, size = self._delete(table, key, apply=ok)
                    self._record(self.writes, phase, table, operation, units, size, first, key=key)
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
                elif action == "Update":
                    units, size = self._update(table, spec, apply=ok, operation=f"{operation}.Update")
                else:
                    units, size = self._condition_check(table, spec["Key"])
                key = spec.get("Item") or spec["Key"]
                self._record(
                    self.writes, phase, table, operation, 2 * units, size, table not in seen_tables, not ok, key
                )
                seen_tables.add(table)
        elif operation in DYNAMODB_READS:
            self._read(phase, operation, body, response or {})

    # --- reads -------------------------------------------------------------------------

    def _stored_size(self, table: str, key_map: dict[str, Any], returned: dict[str, Any] | None) -> int:
        stored = self._items.get(self._key(table, key_map))
        if stored:
            return stored.size
        return item_size(returned) if returned else 0

    def _read(self, phase: str, operation: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        """Reads: 1 unit per 4 KB, half if eventually consistent, double if transactional.

        GetItem, BatchGetItem and TransactGetItems round each item up (a missing item
        costs the minimum, as a present one of 0 bytes would); BatchGetItem's unprocessed
        keys are not read, so not charged. Query and Scan round up the total size of
        the items read (returned here: a FilterExpression or ``Select: COUNT`` would hide
        items that were read and charged, so such calls are listed as approximated).
        """
        if operation == "GetItem":
            table = body["TableName"]
            size = self._stored_size(table, body["Key"], response.get("Item"))
            factor = 1.0 if body.get("ConsistentRead") else 0.5
            self._record(self.reads, phase, table, operation, read_units(size) * factor, size, True, key=body["Key"])
        elif operation == "BatchGetItem":
            unprocessed = response.get("UnprocessedKeys") or {}
            for table, spec in body["RequestItems"].items():
                factor = 1.0 if spec.get("ConsistentRead") else 0.5
                returned = {self._key(table, item): item for item in response.get("Responses", {}).get(table, [])}
                skipped = {self._key(table, k) for k in unprocessed.get(table, {}).get("Keys", [])}
                first = True
                for key_map in spec["Keys"]:
                    key = self._key(table, key_map)
                    if key in skipped:
                        continue  # not read, not charged; the caller asks again
                    size = self._stored_size(table, key_map, returned.get(key))
                    units = read_units(size) * factor
                    self._record(self.reads, phase, table, operation, units, size, first, key=key_map)
                    first = False
        elif operation == "TransactGetItems":
            answers = response.get("Responses") or []
            seen_tables: set[str] = set()
            for position, entry in enumerate(body["TransactItems"]):
                spec = entry["Get"]
                table = spec["TableName"]
                answer = answers[position].get("Item") if position < len(answers) else None
                size = self._stored_size(table, spec["Key"], answer)
                units = 2 * read_units(size)
                self._record(
                    self.reads, phase, table, operation, units, size, table not in seen_tables, key=spec["Key"]
                )
                seen_tables.add(table)
        else:  # Query / Scan: the total size read, rounded up once
            table = body["TableName"]
            if body.get("FilterExpression") or body.get("Select") == "COUNT":
                self.unsupported[f"{operation} with a filter or COUNT (only the returned items counted)"] += 1
            items = response.get("Items", [])
            size = sum(self._stored_size(table, item, item) for item in items)
            factor = 1.0 if body.get("ConsistentRead") else 0.5
            first_item = items[0] if items else None
            self._record(self.reads, phase, table, operation, read_units(size) * factor, size, True, key=first_item)


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
        self.dynamodb.write_kinds.clear()
        self.dynamodb.read_kinds.clear()
        self.dynamodb.unsupported.clear()

    def reset_shadow(self) -> None:
        """After moto is reset: every table is empty again."""
        self.dynamodb.forget()

    def calls_of(self, phase: str) -> dict[tuple[str, str], int]:
        return {(s, o): n for (p, s, o), n in sorted(self.calls.items()) if p == phase}

    def attempts_of(self, phase: str) -> dict[tuple[str, str], int]:
        return {(s, o): n for (p, s, o), n in sorted(self.attempts.items()) if p == phase}
