"""Sample audiences with the real segment-analytics-python client: a person who looks at the
pricing page three times enters "pricing-page-interest" within seconds, and a person identified
with a paid plan enters "current-customers" and leaves it on a free plan. (Raw HTTP calls:
tests/e2e/test_e2e_segmentation.py.)

Each test checks the person's own audience trait through the Profile API (class=audience), not
the audience's member count: on the shared e2e stack other tests' profiles are members too (the
demo person views the pricing page and has plan "subscriber"; other SDK users have paid plans)."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import segment.analytics as segment_analytics
from e2e_pipeline import Pipeline

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audiences"


def admin(pipeline: Pipeline, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{pipeline.api_url}/v1/admin{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(f"{pipeline.stack.access_token}:".encode()).decode(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def sample(name: str, marker: str) -> dict[str, Any]:
    """A sample definition under an id of its own (the e2e stack is shared between tests)."""
    definition = json.loads((EXAMPLES / f"{name}.json").read_text())
    return {**definition, "id": f"{definition['id']}-{marker}"}


# "Within seconds" on a quiet stack (about 1-3 s each here); the bound leaves room for the
# shared e2e stack, whose background jobs (backfills over every stored profile of the other
# tests) compete for the one moto server.
STEP_TIMEOUT_S = 90.0


def wait_for(check: Any, timeout: float = STEP_TIMEOUT_S) -> float:
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while not holds(check):
        assert time.monotonic() - start < timeout, "not within the timeout"
        time.sleep(0.2)
    return time.monotonic() - start


def holds(check: Any) -> bool:
    """``check()``, where a poll that timed out counts as "not yet": on a loaded machine one
    request to the shared stack can outlast the client's 10 s or its function's timeout (the
    gateway's 503), which is not what the waits time."""
    try:
        return bool(check())
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return False
        raise
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            return False
        raise
    except TimeoutError:
        return False


def audience_trait(pipeline: Pipeline, user: str, audience_id: str) -> bool | None:
    """The audience's boolean trait on the person's profile (Profile API, class=audience);
    None while the profile or the trait is not there."""
    url = (f"{pipeline.api_url}/v1/spaces/{pipeline.stack.space}/collections/users/profiles/"
           f"user_id:{user}/traits?class=audience")
    auth = "Basic " + base64.b64encode(f"{pipeline.stack.access_token}:".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": auth}),
                                    timeout=10) as response:
            return json.loads(response.read())["traits"].get(audience_id)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        if error.code == 404:  # the profile is not there yet
            return None
        raise


def wait_until_ready_and_quiet(pipeline: Pipeline, audience_id: str) -> None:
    """As a person would: wait until the new audience is ready (its counters kept from
    live_from on, the history before it backfilled, every stored profile evaluated), and the
    pipeline is quiet, then send events and watch."""
    wait_for(lambda: admin(pipeline, "GET", f"/audiences/{audience_id}")["status"] == "ready", timeout=180)
    pipeline.drain(timeout=180)


def test_the_pricing_sample_fills_within_seconds_of_sdk_page_views(pipeline: Pipeline) -> None:
    marker = uuid.uuid4().hex[:10]
    pricing = sample("pricing-page-interest", marker)
    admin(pipeline, "POST", "/audiences", pricing)
    try:
        wait_until_ready_and_quiet(pipeline, pricing["id"])
        errors: list[Any] = []
        client = segment_analytics.Client(pipeline.write_key, host=pipeline.api_url, sync_mode=True,
                                          on_error=lambda e, batch: errors.append(e))
        user = f"sdk-{marker}"

        def member() -> bool:
            return audience_trait(pipeline, user, pricing["id"]) is True

        client.page(user_id=user, name="Pricing", properties={"path": "/pricing"})
        client.page(user_id=user, name="Pricing", properties={"path": "/pricing"})
        time.sleep(1.0)
        assert not member()  # two views: not yet
        client.page(user_id=user, name="Pricing", properties={"path": "/pricing"})
        entered = wait_for(member)
        client.flush()
        assert errors == []
        print(f"entered pricing-page-interest {entered:.1f} s after the third view")
        members = {m["profile_id"] for m in admin(pipeline, "GET", f"/audiences/{pricing['id']}/members")["data"]}
        mine = [pid for pid in members
                if {m["audience_id"]: m["member"] for m in admin(pipeline, "GET", f"/profiles/{pid}/audiences")["data"]}
                .get(pricing["id"])]
        assert mine, members
    finally:
        admin(pipeline, "DELETE", f"/audiences/{pricing['id']}")


def test_the_current_customers_sample_follows_the_plan_trait_of_sdk_identify_calls(pipeline: Pipeline) -> None:
    marker = uuid.uuid4().hex[:10]
    customers = sample("current-customers", marker)
    admin(pipeline, "POST", "/audiences", customers)
    try:
        wait_until_ready_and_quiet(pipeline, customers["id"])
        errors: list[Any] = []
        client = segment_analytics.Client(pipeline.write_key, host=pipeline.api_url, sync_mode=True,
                                          on_error=lambda e, batch: errors.append(e))
        user = f"sdk-plan-{marker}"

        client.identify(user_id=user, traits={"plan": "pro"})
        entered = wait_for(lambda: audience_trait(pipeline, user, customers["id"]) is True)
        client.identify(user_id=user, traits={"plan": "free"})
        left = wait_for(lambda: audience_trait(pipeline, user, customers["id"]) is False)
        client.flush()
        assert errors == []
        print(f"current-customers: entered {entered:.1f} s after identify plan=pro, "
              f"left {left:.1f} s after identify plan=free")
    finally:
        admin(pipeline, "DELETE", f"/audiences/{customers['id']}")
