"""DynamoDB key parts built from client-supplied strings, kept within DynamoDB's limits.

Partition keys may be 2,048 bytes and sort keys 1,024; ids may be 1,024 characters of
any Unicode (up to 4 KB). A part longer than ``limit`` bytes is replaced by its SHA-256,
which keeps keys unique and deterministic (the same id always maps to the same key).
"""

from __future__ import annotations

import hashlib

DEFAULT_LIMIT = 512


def bounded(value: str, limit: int = DEFAULT_LIMIT) -> str:
    raw = value.encode("utf-8")
    if len(raw) <= limit:
        return value
    return "sha256:" + hashlib.sha256(raw).hexdigest()
