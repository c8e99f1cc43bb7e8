"""The S3 archive: one gzip JSONL object per consumer batch, partitioned by date.

Keys: ``events/dt=YYYY-MM-DD/hour=HH/<shard>-<first seq>-<last seq>.jsonl.gz`` (and
``quarantine/...`` for refused records). The key is derived from the batch, so a
retried batch overwrites its own object; after a bisected retry an event can appear in
two objects, so replays dedupe by ``messageId`` (docs/replay.md).
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any


def archive_key(prefix: str, moment: datetime, shard_id: str, first_seq: str, last_seq: str) -> str:
    moment = moment.astimezone(UTC)
    return (f"{prefix}/dt={moment:%Y-%m-%d}/hour={moment:%H}/"
            f"{shard_id}-{first_seq}-{last_seq}.jsonl.gz")


def encode_lines(lines: list[dict[str, Any]]) -> bytes:
    # ASCII-only JSON: U+2028, U+0085 and friends inside strings would otherwise end a
    # "line" for readers that split on every Unicode line break (Python's splitlines).
    text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


class S3Archive:
    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def write(self, key: str, lines: list[dict[str, Any]]) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=encode_lines(lines),
                            ContentType="application/x-ndjson", Metadata={"records": str(len(lines))})

    def read(self, key: str) -> list[dict[str, Any]]:
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in gzip.decompress(body).decode("ascii").split("\n") if line]
