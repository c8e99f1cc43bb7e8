"""The collector handler's HTTP surface: CORS, settings, OpenAPI, throttling, outages."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from cdp import resources
from cdp.aws.event_stream import KinesisEventStream
from tests.conftest import load_handler
from tests.integration.conftest import http_event, read_stream_as_lambda_event, scan
from tests.integration.test_collection_pipeline import post

collector = load_handler("collector")


def test_cors_preflight_is_answered(write_key, lambda_context):
    response = collector.handler(http_event("/v1/t", "", {
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"}, method="OPTIONS"), lambda_context)
    assert response["statusCode"] == 204
    headers = {k.lower(): v for k, v in response["headers"].items()}
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]


def test_settings_point_analytics_js_at_this_host(write_key, lambda_context):
    event = http_event(f"/v1/projects/{write_key}/settings", "", {"Host": "cdp.example.com",
                                                                   "X-Forwarded-Proto": "https"},
                       method="GET")
    response = collector.handler(event, lambda_context)
    assert response["statusCode"] == 200
    settings = json.loads(response["body"])["integrations"]["Segment.io"]
    assert settings == {**settings, "apiKey": write_key, "apiHost": "cdp.example.com/v1",
                        "protocol": "https"}
    unknown = collector.handler(http_event("/v1/projects/nope/settings", "", method="GET"), lambda_context)
    assert unknown["statusCode"] == 404


def test_openapi_documents_every_tracking_route(aws, lambda_context):
    response = collector.handler(http_event("/openapi.json", "", method="GET"), lambda_context)
    doc = json.loads(response["body"])
    for path in ("identify", "track", "page", "screen", "group", "alias", "batch", "import",
                 "i", "t", "p", "s", "g", "a", "b"):
        assert "post" in doc["paths"][f"/v1/{path}"]
    assert "TrackCall" in doc["components"]["schemas"]
    track = doc["components"]["schemas"]["TrackCall"]
    assert "event" in track["required"]
    docs = collector.handler(http_event("/docs", "", method="GET"), lambda_context)
    assert docs["statusCode"] == 200 and "swagger" in docs["body"].lower()


def _stubbed_stream(error_code: str) -> tuple[KinesisEventStream, Stubber]:
    kinesis = boto3.client("kinesis")
    stubber = Stubber(kinesis)
    for _ in range(4):
        stubber.add_client_error("put_records", service_error_code=error_code, http_status_code=400)
    stubber.activate()
    return KinesisEventStream(kinesis, "cdp-events", sleep=lambda s: None), stubber


@pytest.mark.parametrize(("code", "status"), [("ProvisionedThroughputExceededException", 429),
                                              ("InternalFailure", 503)])
def test_stream_trouble_is_429_or_503_with_retry_after(write_key, lambda_context, monkeypatch, code, status):
    deps = collector.dependencies()
    stream, _ = _stubbed_stream(code)
    monkeypatch.setattr(deps, "writer", stream)
    response = post("/v1/track", {"userId": "u", "event": "E"}, write_key, lambda_context)
    assert response["statusCode"] == status
    assert response["headers"]["Retry-After"] == "2"
    assert json.loads(response["body"])["success"] is False


def test_partially_failed_put_records_are_retried_until_stored(aws):
    kinesis = boto3.client("kinesis")
    real = kinesis.put_records
    calls: list[int] = []

    def flaky_put_records(**kwargs):
        calls.append(len(kwargs["Records"]))
        if len(calls) == 1:  # first call: the second record is throttled
            response = real(**{**kwargs, "Records": kwargs["Records"][:1]})
            response["Records"].append({"ErrorCode": "ProvisionedThroughputExceededException",
                                        "ErrorMessage": "slow down"})
            response["FailedRecordCount"] = 1
            return response
        return real(**kwargs)

    kinesis.put_records = flaky_put_records
    from cdp.ingest import StreamRecord
    KinesisEventStream(kinesis, resources.EVENT_STREAM.local_name, sleep=lambda s: None).put_records(
        [StreamRecord("a", b"1"), StreamRecord("b", b"2")])
    assert calls == [2, 1]


def test_refused_single_event_leaves_no_trace(write_key, lambda_context):
    response = post("/v1/identify", {"traits": {"email": "a@example.com"}}, write_key, lambda_context)
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"]["message"] == "either userId or anonymousId is required"
    assert read_stream_as_lambda_event()["Records"] == []
    assert scan(resources.QUARANTINE_TABLE.local_name) == []


def test_settings_of_a_write_key_no_route_variable_takes_is_404_not_405(aws, lambda_context):
    # API Gateway hands the path over decoded: "/v1/projects/k€y/settings" arrives with the "€".
    response = collector.handler(http_event("/v1/projects/k\u20acy/settings", "", method="GET"), lambda_context)
    assert response["statusCode"] == 404
    wrong_method = collector.handler(http_event("/v1/projects/k1/settings", "", method="POST"), lambda_context)
    assert wrong_method["statusCode"] == 405
