"""The Profile API through the running local stack: the real Segment client writes, the API reads.

Events go through the collector, the stream and the consumer's unification stage; the
profile is read back over HTTP (Segment's Profile API shape, HTTP Basic with the
access token) and with `cdp profile get` / `cdp tokens`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import segment.analytics as segment_analytics
from e2e_pipeline import Pipeline

pytestmark = pytest.mark.e2e
CDP = Path(sys.executable).parent / "cdp"


def read(pipeline: Pipeline, path: str, token: str | None = None) -> tuple[int, dict[str, Any], Message]:
    token = pipeline.stack.access_token if token is None else token
    headers = {"Authorization": "Basic " + base64.b64encode(f"{token}:".encode()).decode()} if token else {}
    request = urllib.request.Request(pipeline.api_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def cdp(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    stack = pipeline.stack
    return subprocess.run(
        [str(CDP), "--aws-url", stack.aws_endpoint_url, "--api-url", stack.api_url, *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


@pytest.fixture(scope="module")
def person(pipeline: Pipeline) -> dict[str, str]:
    """One person's journey, sent with segment-analytics-python and processed by the stack."""
    errors: list[Any] = []
    client = segment_analytics.Client(pipeline.write_key, host=pipeline.api_url, sync_mode=True, max_retries=2,
                                      on_error=lambda error, batch: errors.append(error))
    run = uuid.uuid4().hex[:8]
    who = {"user": f"user-{run}", "anon": f"anon-{run}", "email": f"Ana.{run}@Example.com",
           "group": f"acct-{run}", "phone": "+1 415 555 0123"}
    client.page(anonymous_id=who["anon"], name="Pricing", properties={"plan": "pro"})
    client.identify(who["user"], {"email": who["email"], "name": "Ana", "phone": who["phone"]},
                    anonymous_id=who["anon"])
    client.track(who["user"], "Order Completed", {"total": 30})
    client.group(who["user"], who["group"], {"industry": "retail"})
    assert errors == []
    pipeline.drain()
    return who


def users(pipeline: Pipeline, identifier: str, resource: str, query: str = "") -> str:
    return (f"/v1/spaces/{pipeline.stack.space}/collections/users/profiles/"
            f"{quote(identifier, safe=':@')}/{resource}{query}")


def test_a_profile_is_read_back_by_any_of_its_identifiers(pipeline: Pipeline, person: dict[str, str]) -> None:
    for identifier in (f"email:{person['email'].upper()}", f"user_id:{person['user']}",
                       f"anonymous_id:{person['anon']}", "phone:+14155550123"):
        status, body, headers = read(pipeline, users(pipeline, identifier, "traits"))
        assert status == 200, (identifier, body)
        assert body["traits"] == {"email": person["email"], "name": "Ana", "phone": person["phone"]}
        assert headers["Cache-Control"] == "no-store"

    _, ids, _ = read(pipeline, users(pipeline, f"user_id:{person['user']}", "external_ids"))
    assert {(d["type"], d["id"]) for d in ids["data"]} >= {
        ("user_id", person["user"]), ("anonymous_id", person["anon"]), ("email", person["email"].lower()),
        ("phone", "+14155550123")}


def test_events_come_newest_first_page_by_page(pipeline: Pipeline, person: dict[str, str]) -> None:
    _, first, _ = read(pipeline, users(pipeline, f"user_id:{person['user']}", "events", "?limit=2"))
    assert [e["type"] for e in first["data"]] == ["group", "track"]
    assert first["data"][1]["event"] == "Order Completed" and first["cursor"]["has_more"] is True
    _, rest, _ = read(pipeline, users(pipeline, f"user_id:{person['user']}", "events",
                                      f"?limit=2&next={first['cursor']['next']}"))
    assert [e["type"] for e in rest["data"]] == ["identify", "page"]
    assert rest["cursor"]["has_more"] is False


def test_accounts_and_links(pipeline: Pipeline, person: dict[str, str]) -> None:
    _, links, _ = read(pipeline, users(pipeline, f"user_id:{person['user']}", "links"))
    assert [d["external_ids"][0]["id"] for d in links["data"]] == [person["group"]]
    account = f"/v1/spaces/{pipeline.stack.space}/collections/accounts/profiles/group_id:{person['group']}"
    _, traits, _ = read(pipeline, f"{account}/traits")
    assert traits["traits"] == {"industry": "retail"}
    _, members, _ = read(pipeline, f"{account}/links")
    assert [{"type": "user_id", "id": person["user"], "collection": "users", "encoding": "none"} in d["external_ids"]
            for d in members["data"]] == [True]


def test_without_a_valid_token_nothing_is_read(pipeline: Pipeline, person: dict[str, str]) -> None:
    path = users(pipeline, f"user_id:{person['user']}", "traits")
    status, _, headers = read(pipeline, path, token="")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert read(pipeline, path, token="not-a-token")[0] == 401
    assert read(pipeline, path.replace(f"/spaces/{pipeline.stack.space}/", "/spaces/elsewhere/"))[0] == 403
    assert read(pipeline, users(pipeline, "user_id:nobody-at-all", "traits"))[0] == 404


def test_cdp_profile_get_and_tokens(pipeline: Pipeline, person: dict[str, str]) -> None:
    shown = cdp(pipeline, "profile", "get", f"email:{person['email']}", "--events", "2")
    assert shown.returncode == 0, shown.stderr
    profile = json.loads(shown.stdout)
    assert profile["traits"]["name"] == "Ana"
    assert {"type": "user_id", "id": person["user"], "collection": "users", "encoding": "none"} in (
        profile["external_ids"])
    assert profile["accounts"] == [person["group"]]
    assert [e["type"] for e in profile["events"]] == ["group", "track"]
    assert profile["metadata"]["profile_id"] == profile["profile_id"]

    created = cdp(pipeline, "tokens", "create", "e2e reader")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["space_id"] == pipeline.stack.space
    assert read(pipeline, users(pipeline, f"user_id:{person['user']}", "traits"), token["access_token"])[0] == 200
    listing = cdp(pipeline, "tokens", "list")
    assert token["token_id"] in listing.stdout and token["access_token"] not in listing.stdout
    revoked = cdp(pipeline, "tokens", "revoke", token["token_id"])
    assert revoked.returncode == 0
    assert f"{token['token_id']}\trevoked" in cdp(pipeline, "tokens", "list").stdout

    missing = cdp(pipeline, "profile", "get", "user_id:nobody-at-all")
    assert missing.returncode != 0 and "404" in missing.stderr
