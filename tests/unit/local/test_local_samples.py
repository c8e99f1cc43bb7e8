"""The committed sample events are what the builders produce; the demo story is valid."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cdp.ingest import validate_event
from cdp.local.demo import load_story, shift_to
from cdp.local.functions import repo_root
from cdp.local.samples import render, sample_files
from cdp.segment import CALL_TYPES, RejectedEvent

EVENTS = repo_root() / "events"


@pytest.mark.parametrize("relative", sorted(sample_files()))
def test_the_committed_sample_equals_what_the_builders_produce(relative: str) -> None:
    path = EVENTS / relative
    assert path.is_file(), f"{path} is missing; run python -m cdp.local.samples"
    assert path.read_text(encoding="utf-8") == render(sample_files()[relative]), (
        f"{path} is stale; run python -m cdp.local.samples")


def test_there_is_one_segment_sample_per_call_type_and_a_batch() -> None:
    names = {p.stem for p in (EVENTS / "segment").glob("*.json")}
    assert names == {*CALL_TYPES, "batch"}
    for call_type in CALL_TYPES:
        call = json.loads((EVENTS / "segment" / f"{call_type}.json").read_text())
        assert not isinstance(validate_event(call, call_type), RejectedEvent)


def test_the_kinesis_sample_carries_the_record_format_of_the_collector() -> None:
    import base64

    event = json.loads((EVENTS / "kinesis_batch.json").read_text())
    assert len(event["Records"]) == 2
    for record in event["Records"]:
        envelope = json.loads(base64.b64decode(record["kinesis"]["data"]))
        assert envelope["v"] == 1
        assert envelope["kind"] == "event"
        assert envelope["source_id"] == "src_local"
        assert envelope["event"]["messageId"] and envelope["event"]["receivedAt"]


def test_every_demo_event_is_a_valid_segment_call_and_the_story_uses_all_six_types() -> None:
    story = load_story()
    types = set()
    message_ids = []
    for _name, body in story:
        for index, event in enumerate(body["batch"]):
            assert not isinstance(validate_event(event, None, index), RejectedEvent), event
            types.add(event["type"])
            message_ids.append(event["messageId"])
    assert types == set(CALL_TYPES)
    assert len(message_ids) == len(set(message_ids))


def test_the_demo_is_shifted_so_its_last_event_happens_now() -> None:
    end = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    shifted = shift_to(load_story(), end)
    stamps = sorted(e["timestamp"] for _, body in shifted for e in body["batch"])

    assert stamps[-1] == "2030-01-02T03:04:05.000Z"
    original = sorted(e["timestamp"] for _, body in load_story() for e in body["batch"])
    assert len(stamps) == len(original)
