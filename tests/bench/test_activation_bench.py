"""bench.activation: ``--smoke`` runs every part (router, destinations, batch syncs, local
latency) and prints each figure the docs quote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.activation import Phase, change_pairs, cost_lines, trigger_record
from bench.activation_latency import percentile
from cdp.activation.router import membership_change

REPO = Path(__file__).resolve().parents[2]


def test_change_pairs_are_alternately_an_entry_and_an_exit_the_router_recognises() -> None:
    changes = [membership_change(old, new) for old, new in change_pairs(0, 4)]
    assert [c.transition if c else None for c in changes] == ["entered", "exited", "entered", "exited"]


def test_trigger_records_are_the_collectors_event_records() -> None:
    record = trigger_record(7, "t")
    assert (record["v"], record["kind"], record["event"]["type"]) == (1, "event", "track")
    assert record["event"]["messageId"] == "bench-t-0000007"


def test_costs_add_up_per_service() -> None:
    figures = Phase("x", inputs=1000, invocations=10, round_cpu_ms=[1.0], sqs_billed=100, read_units=500.0)
    lines = cost_lines(figures, 512)
    assert lines["total"] == pytest.approx(sum(v for k, v in lines.items() if k != "total"))
    assert lines["sqs"] == pytest.approx(100 / 1000 * 1_000_000 * 0.40 / 1_000_000)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)


@pytest.mark.timeout(180)
def test_smoke_run_prints_every_figure() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.activation", "all", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=170, check=True)
    out = done.stdout
    for expected in ("router (512 MB)", "changes, 1 destination(s): CPU", "events +audience, 3 destination(s)",
                     "SQS requests", "DynamoDB read units", "cost per million",
                     "webhook, batches of 10: CPU", "s3, batches of 300", "meta, batches of 300",
                     "by the event source mapping", "keep-alive check",
                     "destination: s3", "destination: meta", "tracemalloc peak", "ru_maxrss",
                     "(a) track -> trigger -> webhook: p50", "(b) identify -> audience entry -> webhook: p50"):
        assert expected in out, expected
