"""`cdp backfills`: each run's specs, status and progress; `--watch` until every definition is ready."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from cdp.cli import main, segments


def run_item(status: str, progress: float, done: int = 8, scanned: int = 40) -> dict[str, Any]:
    return {"run_id": "r1", "specs": {"ltv_spec": "g1"}, "status": status, "segments_total": 8,
            "segments_done": done, "scanned": scanned, "profiles": 10, "written": 4, "estimate": 100,
            "progress": progress, "started_at": "2026-11-28T10:00:00.000Z", "updated_at": "2026-11-28T10:01:00.000Z",
            "finished_at": "2026-11-28T10:02:00.000Z" if status == "done" else None}


class FakeAdmin:
    """Answers GET /backfills from a script of pages, and the definition collections."""

    def __init__(self, pages: list[list[dict[str, Any]]], waiting_polls: int = 0) -> None:
        self.pages = pages
        self.waiting_polls = waiting_polls
        self.calls: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        self.calls.append(path)
        if path == "/backfills":
            return {"data": self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]}
        if path == "/computed-traits" and self.waiting_polls > 0:
            self.waiting_polls -= 1
            return {"data": [{"id": "ltv", "status": "backfilling"}]}
        return {"data": [{"id": "x", "status": "ready"}]}


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Any:
    holder: dict[str, FakeAdmin] = {}
    monkeypatch.setattr(segments, "_client", lambda ctx, token, url: holder["admin"])
    return holder


def test_progress_bar_fills_with_progress() -> None:
    assert segments.progress_bar(0.0, width=10) == "[..........]   0%"
    assert segments.progress_bar(0.5, width=10) == "[#####.....]  50%"
    assert segments.progress_bar(1.0, width=10) == "[##########] 100%"


def test_backfills_lists_each_runs_specs_status_and_progress(admin: Any) -> None:
    admin["admin"] = FakeAdmin([[run_item("done", 1.0)]])
    result = CliRunner().invoke(main, ["backfills"])
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert first.startswith("r1\tdone\t[###") and "100%" in first and "segments 8/8" in first
    assert "ltv_spec" in second and "finished 2026-11-28T10:02:00.000Z" in second


def test_backfills_says_when_none_has_run(admin: Any) -> None:
    admin["admin"] = FakeAdmin([[]])
    assert CliRunner().invoke(main, ["backfills"]).output == "no backfill has run\n"


def test_watch_shows_progress_until_every_definition_is_ready(admin: Any) -> None:
    admin["admin"] = FakeAdmin([[], [run_item("running", 0.25, done=2, scanned=25)],
                                [run_item("running", 0.5, done=4, scanned=50)], [run_item("done", 1.0)]],
                               waiting_polls=1)
    result = CliRunner().invoke(main, ["backfills", "--watch", "--interval", "0.1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "waiting to start (settle time): ltv"
    assert "25%" in lines[1] and "segments 2/8" in lines[1]
    assert "50%" in lines[2]
    assert lines[-1] == "every definition is ready" and "\tdone\t" in lines[-3]


def test_watch_gives_up_after_the_timeout(admin: Any) -> None:
    admin["admin"] = FakeAdmin([[run_item("running", 0.1)]])
    result = CliRunner().invoke(main, ["backfills", "--watch", "--interval", "0.1", "--timeout", "0.2"])
    assert result.exit_code == 1 and "still backfilling" in result.output
