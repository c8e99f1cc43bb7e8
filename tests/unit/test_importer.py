"""`cdp import`: row mapping, batching under limits, resume, rejected rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdp.importer import ApiClient, ImportFailed, batches, csv_row_to_call, read_rows, run_import


def test_csv_columns_map_to_traits_or_properties():
    assert csv_row_to_call({"userId": "u1", "email": "a@example.com", "plan": "", "traits.tier": "gold"}) == {
        "type": "identify", "userId": "u1", "traits": {"email": "a@example.com", "tier": "gold"}}
    assert csv_row_to_call({"userId": "u1", "event": "Order Completed", "total": "12.5"}) == {
        "type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": "12.5"}}


def test_message_ids_are_stable_across_reads(tmp_path: Path):
    path = tmp_path / "crm.csv"
    path.write_text("userId,email\nu1,a@example.com\nu2,b@example.com\n")
    first = [r.call["messageId"] for r in read_rows(path) if r.call]
    second = [r.call["messageId"] for r in read_rows(path) if r.call]
    assert first == second and len(set(first)) == 2


def test_jsonl_bad_lines_are_reported_not_sent(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"userId": "u1", "event": "A"}\nnot json\n[1]\n')
    rows = list(read_rows(path))
    assert [r.error is None for r in rows] == [True, False, False]
    assert rows[0].call and rows[0].call["type"] == "track"


def test_batches_respect_event_and_byte_limits(tmp_path: Path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"userId": f"u{i}", "traits": {"x": "y" * 1000}}) + "\n"
                            for i in range(250)))
    sizes = [len(b) for b in batches(read_rows(path), max_events=100, max_bytes=50_000)]
    assert sum(sizes) == 250 and max(sizes) <= 100
    assert all(s < 100 for s in sizes)  # the byte limit binds first here


class FakeApi(ApiClient):
    """Answers like the collector: rejects calls without userId/anonymousId."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__("http://unused", "key")
        self.received: list[dict[str, Any]] = []
        self.fail_on_call = fail_on_call

    def send(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise ImportFailed("connection lost")
        rejected = [{"index": i, "reason": "either userId or anonymousId is required"}
                    for i, c in enumerate(calls) if "userId" not in c and "anonymousId" not in c]
        self.received.extend(c for i, c in enumerate(calls) if i not in {r["index"] for r in rejected})
        return {"success": True, "accepted": len(calls) - len(rejected), "rejected": rejected}


def test_import_resumes_after_a_failure_and_reports_rejected_rows(tmp_path: Path):
    path = tmp_path / "crm.csv"
    lines = ["userId,email"] + [f"u{i},u{i}@example.com" for i in range(250)] + [",orphan@example.com"]
    path.write_text("\n".join(lines) + "\n")
    state, rejected = tmp_path / "state.json", tmp_path / "rejected.jsonl"

    api = FakeApi(fail_on_call=2)
    with pytest.raises(ImportFailed):
        run_import(path, api, state, rejected)
    assert json.loads(state.read_text())["rows_done"] == 100

    api2 = FakeApi()
    report = run_import(path, api2, state, rejected)
    assert report.skipped_rows == 100
    assert len(api.received) + len(api2.received) == 250
    assert [json.loads(line)["row"] for line in rejected.read_text().splitlines()] == [251]

    # Running it again finds nothing left to send.
    api3 = FakeApi()
    assert run_import(path, api3, state, rejected).sent == 0 and api3.calls == 0
