"""Archive objects are JSON Lines that every reader splits the same way."""

from __future__ import annotations

import gzip
import json

from cdp.aws.archive import archive_key, encode_lines


def test_unicode_line_breaks_inside_strings_do_not_split_lines():
    lines = [{"event": {"name": "a\u2028b\u0085c\x1cd", "emoji": "\U0001f600", "lone": "\ud800"}}, {"n": 2}]
    text = gzip.decompress(encode_lines(lines)).decode("ascii")
    assert [json.loads(line) for line in text.splitlines()] == lines


def test_archive_keys_are_partitioned_by_date_and_hour():
    from datetime import UTC, datetime

    key = archive_key("events", datetime(2026, 11, 28, 9, 5, tzinfo=UTC), "shardId-1", "10", "20")
    assert key == "events/dt=2026-11-28/hour=09/shardId-1-10-20.jsonl.gz"
