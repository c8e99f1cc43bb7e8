"""The Kinesis event stream: PutRecords in chunks, retrying the entries that failed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp.ingest import StreamRecord, StreamThrottled, StreamUnavailable

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
THROTTLE_CODES = {"ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException"}


def chunks(records: list[StreamRecord]) -> list[list[StreamRecord]]:
    """Split into PutRecords calls: at most 500 records and 5 MB (data + keys) each."""
    out: list[list[StreamRecord]] = []
    current: list[StreamRecord] = []
    size = 0
    for record in records:
        record_size = len(record.data) + len(record.partition_key.encode("utf-8"))
        if current and (len(current) >= MAX_RECORDS_PER_CALL or size + record_size > MAX_BYTES_PER_CALL):
            out.append(current)
            current, size = [], 0
        current.append(record)
        size += record_size
    if current:
        out.append(current)
    return out


class KinesisEventStream:
    """Writes records to the event stream; raises only when some could not be stored."""

    def __init__(self, kinesis: Any, stream_name: str, attempts: int = 4,
                 base_delay_s: float = 0.05, sleep: Callable[[float], None] = time.sleep) -> None:
        self._kinesis = kinesis
        self._stream = stream_name
        self._attempts = attempts
        self._base_delay = base_delay_s
        self._sleep = sleep
        self.calls = 0

    def put_records(self, records: list[StreamRecord]) -> None:
        for chunk in chunks(records):
            self._put_chunk(chunk)

    def _put_chunk(self, pending: list[StreamRecord]) -> None:
        throttled = False
        for attempt in range(self._attempts):
            if attempt:
                # Exponential backoff with full jitter.
                self._sleep(random.uniform(0, self._base_delay * 2**attempt))
            try:
                self.calls += 1
                response = self._kinesis.put_records(
                    StreamName=self._stream,
                    Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in pending],
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                throttled = code in THROTTLE_CODES
                if not throttled and code not in ("InternalFailure", "ServiceUnavailable"):
                    raise StreamUnavailable(code) from exc
                continue
            except BotoCoreError:  # timeouts, connection errors: retry
                throttled = False
                continue
            if not response.get("FailedRecordCount"):
                return
            failed = [
                record
                for record, entry in zip(pending, response["Records"], strict=True)
                if entry.get("ErrorCode")
            ]
            throttled = any(
                entry.get("ErrorCode") == "ProvisionedThroughputExceededException"
                for entry in response["Records"]
            )
            pending = failed
        if throttled:
            raise StreamThrottled(f"{len(pending)} records throttled after {self._attempts} attempts")
        raise StreamUnavailable(f"{len(pending)} records not stored after {self._attempts} attempts")
