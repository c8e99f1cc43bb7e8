"""The HTTP surface of the local stack besides tracking: health and CORS preflight."""

from __future__ import annotations

import json
import urllib.request

import pytest
from e2e_pipeline import Pipeline

pytestmark = pytest.mark.e2e


def test_health_is_ok_once_the_stack_is_ready(pipeline: Pipeline) -> None:
    with urllib.request.urlopen(f"{pipeline.api_url}/health", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}


def test_cors_preflight_allows_browsers_to_post_events(pipeline: Pipeline) -> None:
    request = urllib.request.Request(f"{pipeline.api_url}/v1/track", method="OPTIONS", headers={
        "Origin": "https://shop.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    })
    with urllib.request.urlopen(request, timeout=10) as response:
        headers = {k.lower(): v for k, v in response.getheaders()}
        assert response.status in (200, 204)

    assert headers["access-control-allow-origin"] in ("*", "https://shop.example.com")
    assert "POST" in headers["access-control-allow-methods"].upper()
    allowed = headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed


def test_a_simple_cross_origin_post_carries_the_allow_origin_header(pipeline: Pipeline) -> None:
    request = urllib.request.Request(
        f"{pipeline.api_url}/v1/track", method="POST",
        data=json.dumps({"userId": "cors-user", "event": "Cross Origin"}).encode(),
        headers={"Origin": "https://shop.example.com", "Content-Type": "text/plain",
                 "Authorization": "Basic " + __import__("base64").b64encode(
                     f"{pipeline.write_key}:".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://shop.example.com")
