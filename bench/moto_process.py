"""moto as a separate server process, so its CPU is never counted as ours.

The server runs this module (``python -m bench.moto_process``): moto's own server,
with one performance fix that changes no outcome (``back_up_touched_items_only``).
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServerProcess:
    """``python -m moto.server`` on a free local port, started and stopped by us."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.moto_process", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],  # where ``bench`` is importable
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout_s} s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def reset(self) -> None:
        """Forget every resource (moto's reset API), as if the server were new."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=60):
            pass

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> MotoServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _TableCopies:
    """Stands in for the ``copy`` module inside ``moto.dynamodb.models`` during a transaction:
    a deep copy of a table returns the table itself (the touched items are backed up instead)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def active(self) -> bool:
        return bool(getattr(self._local, "active", False))

    @active.setter
    def active(self, value: bool) -> None:
        self._local.active = value

    def deepcopy(self, obj: Any, memo: dict[int, Any] | None = None) -> Any:
        from moto.dynamodb.models.table import Table

        if self.active and isinstance(obj, Table):
            return obj
        return copy.deepcopy(obj, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def back_up_touched_items_only() -> None:
    """Make moto's ``TransactWriteItems`` back up the items it touches, not whole tables.

    moto 5.2.5 deep-copies every table of a transaction once per item, to roll back a
    cancelled transaction (cdp.local.moto_speedups brings that to once per table). The
    identity table grows with every person, so each graph transaction would copy tens of
    thousands of items. Here the items the transaction names are copied before it runs
    and put back if it fails: the same rollback, at the cost of the transaction's size.
    Outcomes (what is stored, what is refused) are unchanged; only moto gets faster.
    """
    from moto.dynamodb import models

    backend: Any = models.DynamoDBBackend
    original = backend.transact_write_items
    copies = _TableCopies()
    models.copy = copies  # type: ignore[assignment]

    def touched(self: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
        backups = []
        for entry in transact_items:
            ((_, op),) = entry.items()
            table = self.get_table(op["TableName"])
            keys = op.get("Key") or {
                name: op["Item"][name] for name in (table.hash_key_attr, table.range_key_attr) if name
            }
            hash_value, range_value = self.get_keys_value(table, keys)
            backups.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
        return backups

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        try:
            backups = touched(self, transact_items)
        except Exception:  # malformed request: moto's own code says what is wrong
            return original(self, transact_items)  # type: ignore[no-any-return]
        copies.active = True
        try:
            original(self, transact_items)
        except Exception:
            for table, hash_value, range_value, item in reversed(backups):
                table.delete_item(hash_value, range_value)
                if item is not None and range_value is not None:
                    table.items[hash_value][range_value] = item
                elif item is not None:
                    table.items[hash_value] = item
            raise
        finally:
            copies.active = False

    backend.transact_write_items = transact_write_items


def main(argv: list[str] | None = None) -> None:
    """``moto.server`` with ``back_up_touched_items_only`` applied."""
    from moto import server

    back_up_touched_items_only()
    server.main(argv)


if __name__ == "__main__":
    main()
