"""The events table: every accepted event once, per person; also the record that dedupes it.

Key: ``pk`` = ``u#<userId>`` or ``a#<anonymousId>``; ``sk`` = ``<client time>#<messageId>``,
where the client time is the event's ``originalTimestamp`` (the time the SDK stamped
it, kept as sent) or, if the client sent none, the server's ``timestamp``. Both parts
are the same in every copy an SDK sends again, unlike the skew-corrected ``timestamp``
(it moves with network latency), so the key identifies the event: a copy that finds its
key taken is a duplicate. Ids longer than DynamoDB's key limits allow are replaced by
their SHA-256 (``cdp.keys``).

Attributes: ``source_id``, ``z1`` (the stored event as JSON, zlib-compressed with a preset
dictionary of the Segment spec's names: nearly every event then fits in one write unit),
``expires_at`` (TTL) and ``owner`` (a hash of the Kinesis record that wrote it).

An event sent without any client time has no stable history key (its ``timestamp``
is the receipt time, different in every copy): it is also recorded under a marker item
``m#<messageId>`` / ``m``, which is what dedupes it (SDKs always stamp events, so this
is the rare case of hand-written HTTP clients).

Deduplication (``HistoryStore.claim``): one consistent ``BatchGetItem`` of the batch's
dedupe keys, then one ``BatchWriteItem`` of the new events. A key that exists is a duplicate,
unless its owner is this record (Lambda retrying it after a crash or a partial batch
failure) or the record it is a dead-letter redrive of: then the event is processed
again, which every later stage tolerates (they are idempotent). Events of one person
share a Kinesis partition key, so copies of one event arrive on one shard, in order,
one batch at a time: the read cannot race with the write of another copy. After a
failure the consumer deletes what it wrote (``release``), so a copy sent again later is
not refused. This costs 1 read unit (consistent, item <= 4 KB) and 1 write unit
(item <= 1 KB) per event, where a conditional claim item costs 2 write units in a
transaction, or 1 write unit and a request (about 1 ms of CPU) per event.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdp.aws.dynamo import all_items, batch_write
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import IdentifierRefused, normalise_id
from cdp.keys import bounded

MAX_BATCH_GET = 100
COMPRESSION_LEVEL = 6


# The default identifier rules decide which id names the person's history partition;
# fixed (not the deployment's settings, which may change) so an event's key never moves.
_DEFAULT_RULES = IdentityConfig()


def _graph_id(value: Any) -> bool:
    """Whether the identity graph (with default rules) takes this id, so a profile can list it."""
    try:
        normalised = normalise_id(value)
    except IdentifierRefused:
        return False
    return len(normalised) <= _DEFAULT_RULES.max_value_length and not _DEFAULT_RULES.is_blocked(normalised)


def person_key(event: dict[str, Any]) -> str:
    """``u#<userId>``, or ``a#<anonymousId>`` when there is no userId the graph takes (a
    placeholder such as ``null``, or one too long): the partition is then one the event's
    profile holds, so the profile's history shows the event."""
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    if user_id and (not anonymous_id or _graph_id(user_id) or not _graph_id(anonymous_id)):
        return f"u#{bounded(str(user_id))}"
    return f"a#{bounded(str(anonymous_id))}"


def _original(event: dict[str, Any]) -> str | None:
    original = event.get("originalTimestamp")
    return original if isinstance(original, str) and original else None


def client_time(event: dict[str, Any]) -> str:
    """The event's time as the client stamped it (stable across resends), else the server's."""
    return _original(event) or str(event["timestamp"])


def history_key(event: dict[str, Any]) -> tuple[str, str]:
    return person_key(event), f"{bounded(client_time(event), 64)}#{bounded(event['messageId'], 256)}"


def dedupe_key(event: dict[str, Any]) -> tuple[str, str]:
    """The key whose presence makes a copy of this event a duplicate."""
    if _original(event) is None:
        return f"m#{bounded(event['messageId'], 256)}", "m"
    return history_key(event)


def owner_hash(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:20]


# A preset zlib dictionary of the Segment spec's field names and common values: small
# events compress much better with it (about 30 % smaller than plain zlib on the
# benchmark's traffic), so that nearly every event fits in one write unit. Stored items
# say which dictionary they need by their attribute name (``z1``); it must never change
# (a new one would be ``z2``).
_DICTIONARY_V1 = json.dumps({
    "type": "track", "event": "", "name": "",
    "properties": {"path": "/", "referrer": "https://", "search": "", "title": "", "url": "https://",
                   "revenue": 0, "currency": "USD", "product_id": "", "price": 0, "quantity": 1, "category": ""},
    "traits": {"email": "@example.com", "name": "", "firstName": "", "lastName": "", "phone": "+1", "plan": "",
               "createdAt": "", "company": {"name": ""}},
    "context": {
        "active": True, "app": {"name": "", "version": "", "build": "", "namespace": "com."},
        "campaign": {"name": "", "source": "", "medium": "", "term": "", "content": ""},
        "device": {"id": "", "advertisingId": "", "adTrackingEnabled": True, "manufacturer": "Apple",
                   "model": "iPhone", "name": "", "type": "ios"},
        "ip": "", "library": {"name": "analytics.js", "version": "analytics-python"}, "locale": "en-US",
        "network": {"bluetooth": False, "carrier": "", "cellular": True, "wifi": True},
        "os": {"name": "iOS", "version": ""},
        "page": {"path": "/", "referrer": "", "search": "", "title": "", "url": "https://"},
        "screen": {"width": 0, "height": 0, "density": 2}, "timezone": "America/",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/120.0.0.0 Safari/537.36",
        "traits": {}, "externalIds": [{"id": "", "type": "", "collection": "users", "encoding": "none"}]},
    "integrations": {"All": True}, "anonymousId": "", "userId": "", "groupId": "", "previousId": "",
    "messageId": "", "timestamp": "2026-", "originalTimestamp": "2026-", "sentAt": "2026-", "receivedAt": "2026-",
    "version": 2,
}, separators=(",", ":")).encode("utf-8")
PAYLOAD_ATTRIBUTE = "z1"


def encode_event(event: dict[str, Any]) -> bytes:
    compressor = zlib.compressobj(COMPRESSION_LEVEL, zdict=_DICTIONARY_V1)
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return compressor.compress(text) + compressor.flush()


def _binary(value: Any) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("B")
    if value is not None and not isinstance(value, bytes):
        value = bytes(value.value if hasattr(value, "value") else value)
    return value


def event_of_item(item: dict[str, Any]) -> dict[str, Any]:
    """The stored event of a history item (low-level ``{"B": ...}`` or boto3 resource form)."""
    with_dictionary = _binary(item.get(PAYLOAD_ATTRIBUTE))
    if with_dictionary is not None:
        decompressor = zlib.decompressobj(zdict=_DICTIONARY_V1)
        decoded: dict[str, Any] = json.loads(decompressor.decompress(with_dictionary) + decompressor.flush())
        return decoded
    value = _binary(item.get("z"))  # items written before the dictionary
    if value is not None:
        plain: dict[str, Any] = json.loads(zlib.decompress(value))
        return plain
    payload = item.get("payload")  # items written before compression
    if isinstance(payload, dict):
        payload = payload.get("S")
    return json.loads(payload) if isinstance(payload, str) else {}


def history_events(ddb: Any, events_table: str, partition: str) -> list[dict[str, Any]]:
    """Every event of one history partition (``u#<userId>`` or ``a#<anonymousId>``), oldest first."""
    return [event_of_item(i) for i in all_items(ddb.query, TableName=events_table,
                                                 KeyConditionExpression="pk = :p",
                                                 ExpressionAttributeValues={":p": {"S": partition}})]


def event_item(source_id: str, event: dict[str, Any], expires_at: int, owner: str = "") -> dict[str, Any]:
    pk, sk = history_key(event)
    item: dict[str, Any] = {
        "pk": {"S": pk},
        "sk": {"S": sk},
        "source_id": {"S": source_id},
        PAYLOAD_ATTRIBUTE: {"B": encode_event(event)},
        "expires_at": {"N": str(expires_at)},
    }
    if owner:
        item["owner"] = {"S": owner_hash(owner)}
    return item


@dataclass(frozen=True)
class HistoryEntry:
    """An event to record, with the Kinesis record carrying it."""

    source_id: str
    event: dict[str, Any]
    owner: str  # shard:sequence of the record
    redrive_of: str | None = None  # the record this one is a dead-letter redrive of

    @property
    def key(self) -> tuple[str, str]:
        return dedupe_key(self.event)

    def item_keys(self) -> list[tuple[str, str]]:
        """Every item recording the event: the history item, and the marker if it has one."""
        return list(dict.fromkeys([history_key(self.event), self.key]))


@dataclass
class ClaimResult:
    claimed: set[tuple[str, str]] = field(default_factory=set)
    duplicates: set[tuple[str, str]] = field(default_factory=set)


class HistoryStore:
    def __init__(self, dynamodb: Any, table_name: str, retention_days: int = 90,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._retention_s = retention_days * 86400
        self._sleep = sleep

    def _existing(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Owner hash of each key already stored (consistent reads)."""
        found: dict[tuple[str, str], str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), MAX_BATCH_GET):
            request: dict[str, Any] = {self._table: {
                "Keys": [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in unique[start:start + MAX_BATCH_GET]],
                "ConsistentRead": True, "ProjectionExpression": "pk, sk, #o",
                "ExpressionAttributeNames": {"#o": "owner"}}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    found[(item["pk"]["S"], item["sk"]["S"])] = item.get("owner", {}).get("S", "")
                request = response.get("UnprocessedKeys") or {}
        return found

    def claim(self, entries: list[HistoryEntry]) -> ClaimResult:
        """Record the events not seen before; see the module docstring."""
        result = ClaimResult()
        existing = self._existing(e.key for e in entries)
        writes = []
        for entry in entries:
            owner = existing.get(entry.key)
            if owner is None:
                received = datetime.fromisoformat(entry.event["receivedAt"].replace("Z", "+00:00"))
                expires = int(received.timestamp()) + self._retention_s
                item = event_item(entry.source_id, entry.event, expires, entry.owner)
                writes.append({"PutRequest": {"Item": item}})
                if entry.key != history_key(entry.event):
                    pk, sk = entry.key
                    writes.append({"PutRequest": {"Item": {
                        "pk": {"S": pk}, "sk": {"S": sk}, "owner": item["owner"],
                        "history_sk": item["sk"], "expires_at": {"N": str(expires)}}}})
                result.claimed.add(entry.key)
            elif owner in (owner_hash(entry.owner), owner_hash(entry.redrive_of or entry.owner)):
                result.claimed.add(entry.key)  # this record's own earlier attempt: do it again
            else:
                result.duplicates.add(entry.key)
        batch_write(self._ddb, self._table, writes, self._sleep)
        return result

    def release(self, entries: Iterable[HistoryEntry]) -> None:
        """Forget events whose processing failed, so a copy sent later is not refused."""
        keys = dict.fromkeys(k for entry in entries for k in entry.item_keys())
        deletes = [{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys]
        batch_write(self._ddb, self._table, deletes, self._sleep)
