"""Audiences through the running local stack: a definition saved through the admin API, a
profile that qualifies through the collector, the membership and the Audience Entered /
Exited events in the history, all driven by the identity table's stream."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from e2e_pipeline import Pipeline

from cdp import resources
from cdp.aws.membership_store import MembershipStore

pytestmark = pytest.mark.e2e


def call(pipeline: Pipeline, method: str, path: str, body: dict[str, Any] | None, key: str) -> int:
    request = urllib.request.Request(
        pipeline.api_url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_profile_enters_and_exits_an_audience_defined_through_the_admin_api(pipeline: Pipeline) -> None:
    marker = uuid.uuid4().hex[:12]
    audience_id = f"e2e-{marker}"
    user = f"seg-{marker}"
    token = pipeline.stack.access_token
    condition = {"type": "trait", "trait": "e2e_marker", "op": "equals", "value": marker}
    assert call(pipeline, "POST", "/v1/admin/audiences",
                {"id": audience_id, "name": "E2E audience", "condition": condition}, token) == 201
    try:
        time.sleep(2.5)  # the evaluator's definitions cache (2 s locally)
        assert call(pipeline, "POST", "/v1/identify", {"userId": user, "traits": {"e2e_marker": marker}},
                    pipeline.write_key) == 200
        pipeline.drain()
        store = MembershipStore(pipeline.stack.session().client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
        assert store.members(audience_id).profile_ids != []
        assert call(pipeline, "POST", "/v1/identify", {"userId": user, "traits": {"e2e_marker": "gone"}},
                    pipeline.write_key) == 200
        pipeline.drain()
        assert store.members(audience_id).profile_ids == []
        mine = [e for events in pipeline.table_events().values() for e in events
                if e.get("userId") == user and e.get("type") == "track"]
        assert sorted((e["event"], e["properties"]["audience_key"]) for e in mine) == [
            ("Audience Entered", audience_id), ("Audience Exited", audience_id)]
    finally:
        call(pipeline, "DELETE", f"/v1/admin/audiences/{audience_id}", None, token)
