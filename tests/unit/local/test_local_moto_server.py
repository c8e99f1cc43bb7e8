"""moto's server in a child process (the local stack's default): serves, stops, and says
why when it cannot start."""

from __future__ import annotations

import boto3
import pytest

from cdp.local.moto_server import MotoProcess


def test_moto_in_a_child_process_serves_until_stopped() -> None:
    moto = MotoProcess("127.0.0.1", 0)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        assert moto.running and port > 0
        ddb = boto3.client("dynamodb", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ddb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        assert ddb.list_tables()["TableNames"] == ["t"]
    finally:
        moto.stop()
    assert not moto.running
    moto.stop()  # twice is fine


def test_a_taken_port_is_a_clear_error() -> None:
    first = MotoProcess("127.0.0.1", 0)
    first.start()
    try:
        with pytest.raises(OSError, match=r"cannot start moto on 127\.0\.0\.1"):
            MotoProcess("127.0.0.1", first.get_host_and_port()[1]).start()
    finally:
        first.stop()
