"""The backfill through the running local stack: events sent first, a computed trait and an
audience defined afterwards through the admin API; the stack's scheduled backfill (every 2 s,
3 s settle locally) fills the profile's state from the history, the Profile API shows the
value including the earlier events, the audience fills, and `cdp backfills` says done."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from e2e_pipeline import Pipeline

from cdp import resources
from cdp.aws.membership_store import MembershipStore

pytestmark = pytest.mark.e2e
CDP = Path(sys.executable).parent / "cdp"


def call(pipeline: Pipeline, method: str, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> tuple[int, dict[str, Any]]:
    key = pipeline.stack.access_token if key is None else key
    request = urllib.request.Request(
        pipeline.api_url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def cdp(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    stack = pipeline.stack
    return subprocess.run(
        [str(CDP), "--aws-url", stack.aws_endpoint_url, "--api-url", stack.api_url, *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


def order(pipeline: Pipeline, user: str, event: str, total: float) -> None:
    assert call(pipeline, "POST", "/v1/track", {"userId": user, "event": event, "properties": {"total": total}},
                pipeline.write_key)[0] == 200


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.5)


def test_a_computed_trait_defined_after_the_events_gets_their_values_and_its_audience_fills(
    pipeline: Pipeline,
) -> None:
    marker = uuid.uuid4().hex[:10]
    user = f"bf-{marker}"
    event = f"Backfill Order {marker}"  # only this test's events match the definitions
    trait_id = f"bf_ltv_{marker}"
    audience_id = f"bf-big-{marker}"
    for total in (40, 25):
        order(pipeline, user, event, total)
    pipeline.drain()

    status, trait = call(pipeline, "POST", "/v1/admin/computed-traits", {
        "id": trait_id, "name": "E2E lifetime value",
        "aggregate": {"kind": "sum", "event": event, "property": "total"}})
    assert status == 201, trait
    status, audience = call(pipeline, "POST", "/v1/admin/audiences", {
        "id": audience_id, "name": "E2E big spenders",
        "condition": {"type": "computed_trait", "trait": trait_id, "op": "gte", "value": 100}})
    assert status == 201, audience
    try:
        assert trait["status"] == "backfilling"
        live_from = datetime.fromisoformat(trait["live_from"].replace("Z", "+00:00"))
        # One more order after live_from: the stream consumer folds it, the backfill must not.
        time.sleep(max(0.0, (live_from - datetime.now(UTC)).total_seconds()) + 0.5)
        order(pipeline, user, event, 35)
        pipeline.drain()

        def ready() -> bool:
            return all(call(pipeline, "GET", path)[1].get("status") == "ready" for path in (
                f"/v1/admin/computed-traits/{trait_id}", f"/v1/admin/audiences/{audience_id}"))

        wait_for(ready, 60, "the definitions ready")
        pipeline.drain()

        traits_path = (f"/v1/spaces/{pipeline.stack.space}/collections/users/profiles/"
                       f"{quote('user_id:' + user, safe=':@')}/traits?class=computed_trait")
        status, body = call(pipeline, "GET", traits_path)
        assert status == 200, body
        assert body["traits"][trait_id] == 100  # 40 + 25 from the history, 35 from the stream: each once

        store = MembershipStore(pipeline.stack.session().client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)

        def filled() -> bool:
            pipeline.drain()
            return len(store.members(audience_id).profile_ids) == 1

        wait_for(filled, 30, "the audience filled")

        listed = cdp(pipeline, "backfills")
        assert listed.returncode == 0, listed.stderr
        assert any("\tdone\t" in line and "100%" in line for line in listed.stdout.splitlines()), listed.stdout
        watched = cdp(pipeline, "backfills", "--watch", "--interval", "0.5", "--timeout", "30")
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.splitlines()[-1] == "every definition is ready"
    finally:
        call(pipeline, "DELETE", f"/v1/admin/audiences/{audience_id}")
        call(pipeline, "DELETE", f"/v1/admin/computed-traits/{trait_id}")
