"""The demo story of `cdp local --demo` is accepted and stored in full."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
from e2e_pipeline import Pipeline

from cdp.local.demo import load_story, send_demo

pytestmark = pytest.mark.e2e


def test_the_demo_story_is_accepted_and_every_event_is_stored_once(pipeline: Pipeline) -> None:
    results = send_demo(pipeline.api_url, pipeline.write_key)

    assert [r.status for r in results] == [200] * len(results), [r.body for r in results]
    pipeline.drain()
    stored = pipeline.stored()
    expected = {event["messageId"]: event for _, body in load_story() for event in body["batch"]}
    for message_id, sent in expected.items():
        assert len(stored.table.get(message_id, [])) == 1, message_id
        assert len(stored.archive.get(message_id, [])) == 1, message_id
        event = stored.table[message_id][0]
        assert event["type"] == sent["type"]
        assert event.get("properties") == sent.get("properties")
        assert event.get("traits") == sent.get("traits")
    ios = stored.table["demo-0015-screen-order-status"][0]
    assert ios["context"]["os"]["name"] == "iOS"  # batch-level context applied to each event


def test_the_demo_person_is_one_profile_across_web_and_app(pipeline: Pipeline) -> None:
    send_demo(pipeline.api_url, pipeline.write_key)
    pipeline.drain()
    auth = "Basic " + base64.b64encode(f"{pipeline.stack.access_token}:".encode()).decode()
    url = (f"{pipeline.api_url}/v1/spaces/{pipeline.stack.space}/collections/users/profiles/"
           "email:ada@example.com/external_ids?limit=100")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": auth})) as response:
        ids = {(d["type"], d["id"]) for d in json.loads(response.read())["data"]}
    types = {t for t, _ in ids}
    assert {"user_id", "email", "anonymous_id"} <= types
    assert len([i for i in ids if i[0] == "anonymous_id"]) >= 2  # the browser and the app
