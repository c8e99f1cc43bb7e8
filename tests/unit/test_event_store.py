"""History keys: stable across an SDK's resends; stored events compressed and read back."""

from __future__ import annotations

import zlib

from cdp.aws.event_store import dedupe_key, event_item, event_of_item, history_key


def stored(**extra):
    event = {"type": "track", "event": "E", "userId": "u1", "messageId": "m1",
             "timestamp": "2026-11-28T10:00:00.120Z", "receivedAt": "2026-11-28T10:00:00.300Z"}
    event.update(extra)
    return event


def test_key_uses_the_client_time_so_resends_share_it():
    first = stored(originalTimestamp="2026-11-28T10:00:00.000Z", timestamp="2026-11-28T10:00:00.120Z")
    resend = stored(originalTimestamp="2026-11-28T10:00:00.000Z", timestamp="2026-11-28T10:00:00.480Z")
    assert history_key(first) == history_key(resend) == ("u#u1", "2026-11-28T10:00:00.000Z#m1")
    assert dedupe_key(first) == history_key(first)


def test_an_event_without_client_time_is_deduped_by_its_message_id():
    event = stored()
    assert history_key(event) == ("u#u1", "2026-11-28T10:00:00.120Z#m1")
    assert dedupe_key(event) == ("m#m1", "m")
    assert history_key(stored(userId=None, anonymousId="a1"))[0] == "a#a1"


def test_stored_event_round_trips_compressed_and_small():
    event = stored(originalTimestamp="2026-11-28T10:00:00.000Z",
                   properties={"text": "é" * 50, "n": list(range(50))}, context={"page": {"url": "https://x/" * 20}})
    item = event_item("src", event, 123, owner="shardId-000000000000:4950")
    assert event_of_item(item) == event
    assert len(item["z1"]["B"]) < len(str(event))
    assert item["owner"]["S"] != "shardId-000000000000:4950"  # a hash, not the record id
    legacy = {"payload": {"S": '{"messageId": "old"}'}}
    assert event_of_item(legacy) == {"messageId": "old"}
    older = {"z": {"B": zlib.compress(b'{"messageId": "z"}')}}  # compressed without the dictionary
    assert event_of_item(older) == {"messageId": "z"}


def test_history_goes_under_the_anonymous_id_when_the_graph_refuses_the_user_id():
    assert history_key(stored(userId="null", anonymousId="a1"))[0] == "a#a1"
    assert history_key(stored(userId="u" * 600, anonymousId="a1"))[0] == "a#a1"
    assert history_key(stored(userId="u1", anonymousId="null"))[0] == "u#u1"
    assert history_key(stored(userId="null", anonymousId="undefined"))[0] == "u#null"  # neither: as sent
    assert history_key(stored(userId=None, anonymousId="a1"))[0] == "a#a1"
