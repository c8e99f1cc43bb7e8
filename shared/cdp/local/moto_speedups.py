"""Performance fixes to moto, applied by the local stack (and the benchmarks) only.

1. Transactions (below).
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

import copy
import threading
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
        _applied = True
        return True


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

        def method_names_from_class(clazz: object) -> list[str]:
            if clazz not in classes:
                classes[clazz] = names(clazz)
            return classes[clazz]

        responses.method_names_from_class = method_names_from_class  # type: ignore[attr-defined]
