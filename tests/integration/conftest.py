"""moto-backed AWS for integration tests: the resources of cdp.resources, created fresh."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp import resources
from cdp.aws import clients
from cdp.local.provisioning import provision
from cdp.local.stack import MotoServer
from cdp.sources import SourceRegistry

WRITE_KEY = "test-write-key"


def create_resources() -> None:
    """Every resource of cdp.resources, created as the local stack creates them."""
    provision(boto3.session.Session())


def _reset_handler_caches() -> None:
    """Handlers cache their adapters per warm container; each test is a cold start."""
    clients.reset()
    for name, module in list(sys.modules.items()):
        if name.startswith("cdp_fn_"):
            for attr in ("dependencies", "consumer", "unification", "audience_pass"):
                cached = getattr(module, attr, None)
                if cached is not None and hasattr(cached, "cache_clear"):
                    cached.cache_clear()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        _reset_handler_caches()
        create_resources()
        yield
        _reset_handler_caches()


@pytest.fixture
def write_key(aws: None) -> str:
    table = boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    SourceRegistry(table).create_source("test source", write_key=WRITE_KEY, source_id="src_test")
    return WRITE_KEY


def basic_auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def http_event(path: str, body: bytes | str | dict[str, Any], headers: dict[str, str] | None = None,
               method: str = "POST", base64_body: bool = False) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event."""
    if isinstance(body, dict):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else body
    is_b64 = base64_body or not _is_text(raw)
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {k.lower(): v for k, v in (headers or {}).items()},
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": "127.0.0.1:8080",
            "domainPrefix": "127", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                            "sourceIp": "203.0.113.9", "userAgent": "test"},
            "requestId": "req-1", "routeKey": "$default", "stage": "$default",
            "time": "28/Nov/2026:10:00:00 +0000", "timeEpoch": 1795860000000,
        },
        "body": base64.b64encode(raw).decode() if is_b64 else raw.decode(),
        "isBase64Encoded": is_b64,
    }


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_stream_as_lambda_event(limit: int = 10_000) -> dict[str, Any]:
    """Everything on the stream, shaped as the Kinesis event Lambda receives."""
    kinesis = boto3.client("kinesis")
    name = resources.EVENT_STREAM.local_name
    desc = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    records = []
    for shard in desc["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=limit)
            for r in page["Records"]:
                records.append({
                    "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": r["PartitionKey"],
                                "sequenceNumber": r["SequenceNumber"],
                                "data": base64.b64encode(r["Data"]).decode(),
                                "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp()},
                    "eventSource": "aws:kinesis", "eventVersion": "1.0",
                    "eventID": f"{shard['ShardId']}:{r['SequenceNumber']}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": "arn:aws:iam::123456789012:role/consumer",
                    "awsRegion": "us-east-1", "eventSourceARN": desc["StreamARN"],
                })
            if not page["Records"] or page.get("MillisBehindLatest") == 0:
                break
            iterator = page.get("NextShardIterator")
    return {"Records": records}


def scan(table: str) -> list[dict[str, Any]]:
    return boto3.resource("dynamodb").Table(table).scan()["Items"]


def history() -> list[dict[str, Any]]:
    """The events table's history items (not markers, merge logs or account links)."""
    return [i for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith(("u#", "a#"))]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto as a server that runs one request at a time, as DynamoDB is atomic per request
    (in-process moto is not: concurrency tests need this)."""
    server = MotoServer("127.0.0.1", 0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
