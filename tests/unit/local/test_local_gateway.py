"""The HTTP API emulation: the payload 2.0 event it builds and how it answers."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from local_stack_fakes import ScriptedHandler, local_function

from cdp.local.functions import Invocation
from cdp.local.gateway import MAX_REQUEST_BYTES, HttpApiGateway, match_route, response_from_invocation
from cdp.local.lambda_events import http_api_event

NOW = datetime(2024, 5, 2, 9, 21, 47, 612000, tzinfo=UTC)


def test_the_event_is_payload_format_2_0_of_a_default_route() -> None:
    event = http_api_event(
        method="post", path="/v1/track", raw_query="a=1&b=two%20words&a=3",
        headers=[("Host", "127.0.0.1:8080"), ("Content-Type", "application/json"),
                 ("User-Agent", "analytics-python/2.4.0"), ("Cookie", "sid=abc; theme=dark")],
        body=b'{"userId":"u1","event":"Signed Up"}', source_ip="10.1.2.3", request_id="req-1=", now=NOW)

    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/v1/track"
    assert event["rawQueryString"] == "a=1&b=two%20words&a=3"
    assert event["queryStringParameters"] == {"a": "1,3", "b": "two words"}
    assert event["cookies"] == ["sid=abc", "theme=dark"]
    assert "cookie" not in event["headers"]
    assert "pathParameters" not in event
    assert event["body"] == '{"userId":"u1","event":"Signed Up"}'
    assert event["isBase64Encoded"] is False
    assert event["requestContext"] == {
        "accountId": "123456789012",
        "apiId": "cdplocal01",
        "domainName": "127.0.0.1",
        "domainPrefix": "127",
        "http": {"method": "POST", "path": "/v1/track", "protocol": "HTTP/1.1", "sourceIp": "10.1.2.3",
                 "userAgent": "analytics-python/2.4.0"},
        "requestId": "req-1=",
        "routeKey": "$default",
        "stage": "$default",
        "time": "02/May/2024:09:21:47 +0000",
        "timeEpoch": 1714641707612,
    }


def test_header_names_are_lowercased_and_repeated_headers_comma_joined() -> None:
    event = http_api_event(method="GET", path="/", headers=[
        ("X-Custom", "one"), ("x-custom", "two"), ("ACCEPT", "*/*"), ("X-Forwarded-For", "198.51.100.1")],
        source_ip="10.0.0.9", now=NOW)

    headers = event["headers"]
    assert headers["x-custom"] == "one,two"
    assert headers["accept"] == "*/*"
    assert headers["x-forwarded-for"] == "198.51.100.1, 10.0.0.9"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-amzn-trace-id"].startswith("Root=1-")
    assert all(name == name.lower() for name in headers)
    assert "queryStringParameters" not in event
    assert "cookies" not in event
    assert "body" not in event
    assert event["isBase64Encoded"] is False


def test_gzip_bodies_are_base64_encoded_like_api_gateway_does_for_binary() -> None:
    raw = gzip.compress(b'{"batch":[]}')
    event = http_api_event(method="POST", path="/v1/batch", body=raw, now=NOW,
                           headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")])

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_bodies_that_are_not_utf8_are_base64_encoded() -> None:
    raw = b'{"userId":"\xff\xfe"}'
    event = http_api_event(method="POST", path="/v1/track", body=raw, now=NOW,
                           headers=[("Content-Type", "application/json")])

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_utf8_text_with_non_ascii_characters_is_passed_as_text() -> None:
    raw = '{"name":"Zoë \u2013 ☕"}'.encode()
    event = http_api_event(method="POST", path="/v1/track", body=raw, now=NOW)

    assert event["isBase64Encoded"] is False
    assert event["body"] == '{"name":"Zoë \u2013 ☕"}'


# --- response mapping -----------------------------------------------------------------


def test_a_proxy_response_becomes_status_headers_cookies_and_body() -> None:
    status, headers, body = response_from_invocation(Invocation("r", result={
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Thing": "1"},
        "multiValueHeaders": {"X-Multi": ["a", "b"]},
        "cookies": ["a=1; Path=/", "b=2"],
        "body": base64.b64encode(b"\x00\x01binary").decode(),
        "isBase64Encoded": True,
    }))

    assert status == 201
    assert headers["content-type"] == ["application/json"]
    assert headers["x-multi"] == ["a", "b"]
    assert headers["set-cookie"] == ["a=1; Path=/", "b=2"]
    assert body == b"\x00\x01binary"


def test_a_result_without_status_code_is_the_json_body_of_a_200() -> None:
    status, headers, body = response_from_invocation(Invocation("r", result={"hello": "world"}))

    assert status == 200
    assert headers["content-type"] == ["application/json"]
    assert json.loads(body) == {"hello": "world"}


def test_a_function_error_is_a_500_internal_server_error() -> None:
    failed = Invocation("r", error_type="ValueError", error_message="x")
    status, _headers, body = response_from_invocation(failed)

    assert (status, json.loads(body)) == (500, {"message": "Internal Server Error"})


# --- the server -----------------------------------------------------------------------------


class Echo:
    """A collector stand-in that answers with the event it received."""

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["rawPath"] == "/boom":
            raise RuntimeError("boom")
        return {"statusCode": 200, "headers": {"content-type": "application/json"},
                "cookies": ["seen=1"],
                "body": json.dumps({"event": event, "function": context.function_name,
                                    "remaining_ms": context.get_remaining_time_in_millis()})}


@pytest.fixture
def gateway() -> Iterator[tuple[HttpApiGateway, dict[str, bool]]]:
    state = {"ready": True}
    gw = HttpApiGateway(local_function(Echo(), name="cdp-collector").invoke, port=0,
                        ready=lambda: state["ready"])
    gw.start()
    yield gw, state
    gw.stop()


def request(gw: HttpApiGateway, method: str, path: str, body: bytes | None = None,
            headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers or []:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    data = response.read()
    result = (response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    conn.close()
    return result


def test_the_gateway_invokes_the_function_with_the_request_as_an_event(gateway: Any) -> None:
    gw, _ = gateway
    raw = gzip.compress(b'{"userId":"u1"}')
    status, headers, body = request(gw, "POST", "/v1/track?x=1", raw, [
        ("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
        ("X-Dup", "a"), ("X-Dup", "b"), ("Cookie", "k=v")])

    answer = json.loads(body)
    event = answer["event"]
    assert status == 200
    assert headers["set-cookie"] == "seen=1"
    assert "apigw-requestid" in headers
    assert answer["function"] == "cdp-collector"
    assert 0 < answer["remaining_ms"] <= 60_000
    assert event["rawPath"] == "/v1/track"
    assert event["queryStringParameters"] == {"x": "1"}
    assert event["headers"]["x-dup"] == "a,b"
    assert event["cookies"] == ["k=v"]
    assert event["isBase64Encoded"] is True
    assert gzip.decompress(base64.b64decode(event["body"])) == b'{"userId":"u1"}'
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["requestId"] == headers["apigw-requestid"]


def test_a_handler_exception_is_answered_500(gateway: Any) -> None:
    gw, _ = gateway
    status, _headers, body = request(gw, "GET", "/boom")

    assert (status, json.loads(body)) == (500, {"message": "Internal Server Error"})


def test_requests_over_ten_megabytes_are_refused_with_413(gateway: Any) -> None:
    gw, _ = gateway
    status, _headers, body = request(gw, "POST", "/v1/batch", b"x" * (MAX_REQUEST_BYTES + 1),
                                     [("Content-Type", "application/json")])

    assert (status, json.loads(body)) == (413, {"message": "Request Entity Too Large"})


def test_events_over_lambdas_six_megabytes_are_refused_with_413(gateway: Any) -> None:
    gw, _ = gateway
    status, _headers, _body = request(gw, "POST", "/v1/batch", b"x" * (7 * 1024 * 1024),
                                      [("Content-Type", "application/json")])

    assert status == 413


def test_health_is_answered_by_the_gateway_503_until_ready_then_200(gateway: Any) -> None:
    gw, state = gateway
    state["ready"] = False
    status, _, body = request(gw, "GET", "/health")
    assert status == 503

    state["ready"] = True
    status, _, body = request(gw, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_chunked_request_bodies_are_read(gateway: Any) -> None:
    gw, _ = gateway
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/track", body=iter([b'{"user', b'Id":"u1"}']),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                 encode_chunked=True)
    answer = json.loads(conn.getresponse().read())
    conn.close()

    assert answer["event"]["body"] == '{"userId":"u1"}'


def test_overlapping_requests_run_in_separate_execution_environments() -> None:
    created: list[int] = []
    handler = ScriptedHandler(lambda _e, _n: {"statusCode": 204})

    def factory(index: int) -> Any:
        created.append(index)
        return handler

    from cdp.local.functions import LocalFunction

    function = LocalFunction("cdp-collector", factory, max_concurrency=4)
    function.warm_up()
    assert created == [0]
    assert function.invoke({"x": 1}).result == {"statusCode": 204}
    assert created == [0]  # the warm environment is reused


@pytest.mark.parametrize(("route_key", "method", "path", "expected"), [
    ("GET /v1/spaces/{proxy+}", "GET", "/v1/spaces/s/collections/users/profiles/user_id:a/traits",
     {"proxy": "s/collections/users/profiles/user_id:a/traits"}),
    ("GET /v1/spaces/{proxy+}", "GET", "/v1/spaces/s", {"proxy": "s"}),
    ("GET /v1/spaces/{proxy+}", "GET", "/v1/spaces/", None),
    ("GET /v1/spaces/{proxy+}", "GET", "/v1/spaces", None),
    ("GET /v1/spaces/{proxy+}", "POST", "/v1/spaces/s", None),
    ("GET /v1/spaces/{proxy+}", "HEAD", "/v1/spaces/s", None),
    ("GET /v1/spaces/{proxy+}", "GET", "/v1/track", None),
    ("GET /v1/projects/{key}/settings", "GET", "/v1/projects/k1/settings", {"key": "k1"}),
    ("GET /v1/projects/{key}/settings", "GET", "/v1/projects/k1/other", None),
    ("ANY /health", "DELETE", "/health", {}),
])
def test_routes_match_like_http_api_route_keys(route_key: str, method: str, path: str,
                                               expected: dict[str, str] | None) -> None:
    assert match_route(route_key, method, path) == expected


def test_a_route_event_carries_its_route_key_and_path_parameters() -> None:
    event = http_api_event(method="GET", path="/v1/spaces/s/x", route_key="GET /v1/spaces/{proxy+}",
                           path_parameters={"proxy": "s/x"}, now=NOW)

    assert event["routeKey"] == event["requestContext"]["routeKey"] == "GET /v1/spaces/{proxy+}"
    assert event["pathParameters"] == {"proxy": "s/x"}
