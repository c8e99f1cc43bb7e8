"""Performance fixes to moto, applied by the local stack (and the benchmarks) only.

1. Transactions (below).
3. Reads that cost what they return: moto 5.2 sorts every item of a table on each
   ``Query`` (then keeps one partition) and on each ``Scan`` page, then walks a scan
   from the table's first item to the page's start key, checking each item's segment:
   a page of a 400,000-item table took seconds. Here a base-table ``Query`` sorts only
   its partition, and a ``Scan`` page starts from a sorted list kept per table (and
   per segment) until the table's keys change (``Table.put_item`` / ``delete_item``,
   through which moto makes every write), bisected to its start key. Results, order
   and pagination are unchanged.
4. Item responses serialized as JSON: moto turns every response into JSON by walking
   botocore's model of the operation, attribute by attribute (a third of its CPU on a
   page of 1,000 items). The responses of the item operations (``FAST_OPERATIONS``) are
   DynamoDB JSON already: they are dumped as they are (binary values base64, as the
   model-driven serializer does); ``tests/unit/local`` checks both give the same JSON.
2. Request dispatch: moto's server looks up the backend of every request by listing
   its service modules on disk and matching URL patterns (``get_backend_for_host``),
   and lists the response class's methods with ``inspect`` (``method_names_from_class``),
   each time. Both answers depend only on the host and the class, so they are cached:
   about a fifth of the server's CPU per DynamoDB request. Nothing else changes.

The transaction fix:

moto 5 backs up a table before ``TransactWriteItems`` (to roll back on a cancelled
transaction) with one deep copy *per item* of the transaction: a 100-item claim in
the dedupe table copies that whole table 100 times, so every consumer batch gets
slower as the table grows (quadratic in the events stored). All the copies are
taken before any write, so they are identical; this patch makes them one copy per
table per transaction. Rollback behaves exactly as before.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

_applied = False
_lock = threading.Lock()


class _SnapshotOncePerTransaction:
    """Stands in for the ``copy`` module inside ``moto.dynamodb.models``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self) -> None:
        self._local.snapshots = {}

    def end(self) -> None:
        self._local.snapshots = None

    def deepcopy(self, obj: Any, memo: dict[int, Any] | None = None) -> Any:
        snapshots: dict[int, Any] | None = getattr(self._local, "snapshots", None)
        if snapshots is None:
            return copy.deepcopy(obj, memo)
        key = id(obj)
        if key not in snapshots:
            snapshots[key] = copy.deepcopy(obj, memo)
        return snapshots[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def apply() -> bool:
    """Install the fix (once); returns False if this moto version does not look as expected."""
    global _applied
    with _lock:
        if _applied:
            return True
        try:
            from moto.dynamodb import models
        except ImportError:
            return False
        backend = getattr(models, "DynamoDBBackend", None)
        original = getattr(backend, "transact_write_items", None)
        if backend is None or original is None or not isinstance(getattr(models, "copy", None), ModuleType):
            return False
        snapshots = _SnapshotOncePerTransaction()

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
            snapshots.begin()
            try:
                original(self, transact_items)
            finally:
                snapshots.end()

        models.copy = snapshots  # type: ignore[assignment]
        backend.transact_write_items = transact_write_items
        _cache_dispatch()
        _cheap_reads()
        _plain_item_responses()
        _applied = True
        return True


FAST_OPERATIONS = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan",
                             "BatchGetItem", "BatchWriteItem"})


def _blob(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def plain_item_response(result: Any, members: Any) -> tuple[int, dict[str, str], str]:
    """An item operation's response as moto's serializer would write it (fix 4): the
    output shape's top-level members only (moto's results carry some legacy keys)."""
    kept = {key: value for key, value in result.items() if key in members}
    return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(kept, default=_blob)


def _plain_item_responses() -> None:
    """Fix 4 of the module docstring."""
    try:
        from moto.dynamodb.responses import DynamoResult
    except ImportError:
        return
    original = DynamoResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        model = getattr(context, "operation_model", None)
        shape = getattr(model, "output_shape", None)
        if getattr(model, "name", None) not in FAST_OPERATIONS or shape is None or not isinstance(self.result, dict):
            return original(self, context)
        return plain_item_response(self.result, shape.members)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]
    DynamoResult._cdp_original_execute_result = original  # type: ignore[attr-defined]


def _cheap_reads() -> None:
    """Fix 3 of the module docstring."""
    try:
        from moto.dynamodb.models.dynamo_type import DynamoType
        from moto.dynamodb.models.table import Table
    except ImportError:
        return
    original_query, original_scan, original_all = Table.query, Table.scan, Table.all_items
    original_put, original_delete = Table.put_item, Table.delete_item
    local = threading.local()

    def put_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_cdp_stamp"] = self.__dict__.get("_cdp_stamp", 0) + 1
        return original_put(self, *args, **kwargs)

    def delete_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_cdp_stamp"] = self.__dict__.get("_cdp_stamp", 0) + 1
        return original_delete(self, *args, **kwargs)

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        local.only = hash_key if index_name is None and hash_key is not None else None
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            local.only = None

    def scan(self: Any, filters: Any, limit: Any, exclusive_start_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[1] if len(args) > 1 else kwargs.get("index_name")
        segments = args[4] if len(args) > 4 else kwargs.get("segments", (None, None))
        local.scan = (tuple(segments), exclusive_start_key) if index_name is None else None
        try:
            return original_scan(self, filters, limit, exclusive_start_key, *args, **kwargs)
        finally:
            local.scan = None

    def sort_key(item: Any) -> Any:
        return (item.hash_key, item.range_key) if item.range_key else item.hash_key

    def sorted_all(self: Any) -> list[Any]:
        stamp = self.__dict__.get("_cdp_stamp", 0)
        cached = self.__dict__.get("_cdp_sorted")
        if cached is None or cached[0] != stamp:
            cached = (stamp, original_all(self), {})
            self.__dict__["_cdp_sorted"] = cached
        return cached  # type: ignore[no-any-return]

    def all_items(self: Any) -> list[Any]:
        only = getattr(local, "only", None)
        if only is not None:
            bucket = self.items.get(only)  # get: never insert into the defaultdict
            if bucket is None:
                return []
            return sorted(bucket.values(), key=lambda x: x.range_key) if self.range_key_attr else [bucket]
        scan = getattr(local, "scan", None)
        if scan is None:
            return original_all(self)  # type: ignore[no-any-return]
        segments, start = scan
        _, items, by_segment = sorted_all(self)
        if segments != (None, None):
            if segments not in by_segment:
                by_segment[segments] = [i for i in items if i.is_within_segment(segments)]
            items = by_segment[segments]
        if start:
            hash_value = DynamoType(start[self.hash_key_attr])
            after = (hash_value, DynamoType(start[self.range_key_attr])) \
                if self.range_key_attr and self.range_key_attr in start else hash_value
            return items[bisect.bisect_right(items, after, key=sort_key):]  # type: ignore[no-any-return]
        return list(items)

    Table.put_item = put_item  # type: ignore[method-assign]
    Table.delete_item = delete_item  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]
    Table.scan = scan  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]


def _cache_dispatch() -> None:
    """Cache the per-request lookups of moto's server (fix 2 of the module docstring)."""
    try:
        from moto.core import responses, utils
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    except ImportError:
        return
    lookup = getattr(DomainDispatcherApplication, "get_backend_for_host", None)
    names = getattr(utils, "method_names_from_class", None)
    if lookup is not None:
        hosts: dict[tuple[int, str | None], Any] = {}

        def get_backend_for_host(self: Any, host: str | None) -> Any:
            key = (id(self), host)
            if key not in hosts:
                hosts[key] = lookup(self, host)
            return hosts[key]

        DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]
    if names is not None and getattr(responses, "method_names_from_class", None) is names:
        classes: dict[object, list[str]] = {}

        original_names: Callable[[object], list[str]] = names  # type: ignore[assignment]

        def method_names_from_class(clazz: object) -> list[str]:
            if clazz not in classes:
                classes[clazz] = original_names(clazz)
            return classes[clazz]

        responses.method_names_from_class = method_names_from_class  # type: ignore[attr-defined]
