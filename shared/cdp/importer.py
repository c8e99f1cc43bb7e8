"""``cdp import``: CSV or JSONL files (CRM exports and the like) into Segment calls.

Each row becomes one call, with a messageId derived from the file name, row number
and content: importing a file twice, or resuming after a crash, is deduplicated by
the pipeline. Sending goes through the public API (``/v1/import``), so imported data
gets exactly the validation and quarantine of SDK traffic.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdp.ingest import MAX_EVENT_BYTES

BATCH_EVENTS = 100
BATCH_BYTES = 400 * 1024  # headroom under the 500 KB request limit
RESERVED_COLUMNS = {"type", "userId", "anonymousId", "event", "timestamp", "messageId", "groupId",
                    "previousId", "name", "category"}


@dataclass
class Row:
    number: int  # 1-based data row (line for JSONL, row after the header for CSV)
    call: dict[str, Any] | None
    error: str | None = None


def _message_id(file_name: str, number: int, call: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{file_name}\n{number}\n{json.dumps(call, sort_keys=True)}".encode())
    return f"import-{digest.hexdigest()[:32]}"


def csv_row_to_call(row: dict[str, str]) -> dict[str, Any]:
    """Columns ``traits.x`` / ``properties.x`` go where they say; other non-reserved
    columns become traits (identify) or properties (track). Empty cells are skipped."""
    values = {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
    call_type = values.get("type") or ("track" if values.get("event") else "identify")
    call: dict[str, Any] = {"type": call_type}
    bag_name = "properties" if call_type in ("track", "page", "screen") else "traits"
    bag: dict[str, Any] = {}
    for key, value in values.items():
        if key in RESERVED_COLUMNS:
            if key != "type":
                call[key] = value
        elif key.startswith(("traits.", "properties.")):
            prefix, _, name = key.partition(".")
            call.setdefault(prefix, {})[name] = value
        else:
            bag[key] = value
    if bag:
        call.setdefault(bag_name, {}).update(bag)
    return call


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of a .csv or .jsonl/.ndjson file, with messageIds filled in."""
    name = path.name
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, raw in enumerate(csv.DictReader(handle), start=1):
                call = csv_row_to_call(raw)
                call.setdefault("messageId", _message_id(name, number, call))
                yield Row(number, call)
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                call = json.loads(line)
            except ValueError as exc:
                yield Row(number, None, f"line is not JSON: {exc}")
                continue
            if not isinstance(call, dict):
                yield Row(number, None, "line is not a JSON object")
                continue
            call.setdefault("type", "track" if "event" in call else "identify")
            call.setdefault("messageId", _message_id(name, number, call))
            yield Row(number, call)


def batches(rows: Iterator[Row], max_events: int = BATCH_EVENTS,
            max_bytes: int = BATCH_BYTES) -> Iterator[list[Row]]:
    """Group rows into requests under the API's limits (rows with errors travel along)."""
    current: list[Row] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row.call).encode()) if row.call else 0
        if current and (len(current) >= max_events or size + row_size > max_bytes):
            yield current
            current, size = [], 0
        current.append(row)
        size += row_size
    if current:
        yield current


@dataclass
class ImportState:
    """Progress saved after every acknowledged batch, so an import can resume."""

    file_sha256: str
    rows_done: int = 0
    accepted: int = 0
    rejected: int = 0

    @classmethod
    def load(cls, path: Path, file_sha256: str) -> ImportState:
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("file_sha256") == file_sha256:
                return cls(**data)
        return cls(file_sha256=file_sha256)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ImportFailed(Exception):
    pass


@dataclass
class ApiClient:
    """POSTs batches to ``/v1/import``, retrying 429 / 5xx / connection errors."""

    api_url: str
    write_key: str
    attempts: int = 8
    sleep: Callable[[float], None] = time.sleep
    timeout_s: float = 30.0
    calls: int = field(default=0)

    def send(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        body = gzip.compress(json.dumps({"batch": calls}).encode())
        token = f"{self.write_key}:".encode()
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   "Authorization": "Basic " + base64.b64encode(token).decode(),
                   "User-Agent": "cdp-import/0.1"}
        delay = 0.5
        last = ""
        for _ in range(self.attempts):
            self.calls += 1
            request = urllib.request.Request(f"{self.api_url.rstrip('/')}/v1/import", data=body,
                                             headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return dict(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                if exc.code == 429 or exc.code >= 500:
                    retry_after = exc.headers.get("Retry-After")
                    last = f"HTTP {exc.code}"
                    self.sleep(float(retry_after) if retry_after else delay)
                    delay = min(delay * 2, 30)
                    continue
                try:
                    return {"status": exc.code, **json.loads(payload)}
                except ValueError as err:
                    raise ImportFailed(f"HTTP {exc.code}: {payload[:200]!r}") from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = str(exc)
                self.sleep(delay)
                delay = min(delay * 2, 30)
        raise ImportFailed(f"gave up after {self.attempts} attempts: {last}")


@dataclass
class ImportReport:
    sent: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: int = 0


def run_import(path: Path, client: ApiClient, state_path: Path, rejected_path: Path,
               restart: bool = False, on_rows: Callable[[int], None] = lambda n: None) -> ImportReport:
    """Send every row of ``path`` not yet acknowledged; report rejected rows with reasons."""
    digest = file_sha256(path)
    state = ImportState(file_sha256=digest) if restart else ImportState.load(state_path, digest)
    report = ImportReport(skipped_rows=state.rows_done)
    if restart and rejected_path.exists():
        rejected_path.unlink()
    rows = (row for row in read_rows(path) if row.number > state.rows_done)
    with rejected_path.open("a", encoding="utf-8") as rejected_out:
        for batch in batches(rows):
            problems: list[dict[str, Any]] = [{"row": r.number, "reason": r.error} for r in batch if r.call is None]
            sendable = [r for r in batch if r.call is not None]
            oversized = [r for r in sendable if len(json.dumps(r.call).encode()) > MAX_EVENT_BYTES]
            sendable = [r for r in sendable if r not in oversized]
            problems += [{"row": r.number, "reason": f"row is over {MAX_EVENT_BYTES} bytes"} for r in oversized]
            if sendable:
                response = client.send([r.call for r in sendable if r.call is not None])
                if response.get("status") == 401 or response.get("status") == 404:
                    raise ImportFailed(response.get("error", {}).get("message", "refused"))
                refusals = response.get("rejected") or response.get("error", {}).get("rejected") or []
                if response.get("status") and not refusals:
                    raise ImportFailed(response.get("error", {}).get("message", "request refused"))
                for refusal in refusals:
                    row = sendable[int(refusal["index"])]
                    problems.append({"row": row.number, "reason": refusal.get("reason"),
                                     "field": refusal.get("field")})
                accepted = int(response.get("accepted", 0))
                report.accepted += accepted
                state.accepted += accepted
                report.sent += len(sendable)
            for problem in sorted(problems, key=lambda p: int(p["row"] or 0)):
                rejected_out.write(json.dumps(problem) + "\n")
            report.rejected.extend(problems)
            state.rejected += len(problems)
            state.rows_done = batch[-1].number
            rejected_out.flush()
            state.save(state_path)
            on_rows(len(batch))
    return report

