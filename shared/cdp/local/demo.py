"""The demo: sample audiences and computed traits, then a story of events, through the local HTTP API.

The definitions (``examples/audiences/``) are created through the admin API with the
local access token, as ``cdp audiences create`` does; consumers keep their aggregates
from the definitions' ``live_from`` on, so the story is sent once that moment passed.

Each file is a Segment ``/v1/batch`` request; they are sent in name order, with the
write key as HTTP Basic username, exactly as a Segment library would. Timestamps are
shifted so the story ends just now (the files keep fixed dates so they stay readable
and diffable), which makes the demo person look recently active.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cdp.local.functions import repo_root


def demo_dir() -> Path:
    return repo_root() / "events" / "demo"


def examples_dir() -> Path:
    return repo_root() / "examples" / "audiences"


def example_definitions(directory: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The sample definitions as (admin API collection, definition): computed traits first."""
    folder = directory or examples_dir()
    traits = [("computed-traits", json.loads(p.read_text(encoding="utf-8")))
              for p in sorted((folder / "computed_traits").glob("*.json"))]
    audiences = [("audiences", json.loads(p.read_text(encoding="utf-8"))) for p in sorted(folder.glob("*.json"))]
    return traits + audiences


@dataclass(frozen=True)
class DefinitionResult:
    collection: str
    ident: str
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def load_definitions(api_url: str, access_token: str, directory: Path | None = None,
                     timeout_s: float = 15.0) -> list[DefinitionResult]:
    """Create each sample definition through the admin API (an existing one is left as it is)."""
    auth = base64.b64encode(f"{access_token}:".encode()).decode("ascii")
    results = []
    for collection, definition in example_definitions(directory):
        request = urllib.request.Request(
            f"{api_url.rstrip('/')}/v1/admin/{collection}", data=json.dumps(definition).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                results.append(DefinitionResult(collection, definition["id"], response.status,
                                                json.loads(response.read())))
        except urllib.error.HTTPError as error:
            results.append(DefinitionResult(collection, definition["id"], error.code,
                                            json.loads(error.read() or b"{}")))
    return results


def live_from(results: list[DefinitionResult]) -> datetime | None:
    """When consumers keep every new definition's aggregates (None: nothing to wait for)."""
    moments = [_parse(r.body["live_from"]) for r in results if r.ok and r.body.get("live_from")]
    return max(moments) if moments else None


def _parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load_story(directory: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The demo requests, in the order they are sent: (file name, batch body)."""
    folder = directory or demo_dir()
    return [(path.name, json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(folder.glob("*.json"))]


def shift_to(requests: list[tuple[str, dict[str, Any]]], end: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Move every event's timestamp by one offset so the latest one is ``end``."""
    stamps = [_parse(event["timestamp"]) for _, body in requests for event in body["batch"]
              if "timestamp" in event]
    if not stamps:
        return requests
    offset: timedelta = end - max(stamps)
    shifted = []
    for name, body in requests:
        events = []
        for event in body["batch"]:
            event = dict(event)
            if "timestamp" in event:
                event["timestamp"] = _iso(_parse(event["timestamp"]) + offset)
            events.append(event)
        shifted.append((name, {**body, "batch": events}))
    return shifted


@dataclass(frozen=True)
class DemoResult:
    file: str
    events: int
    status: int
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def send_demo(api_url: str, write_key: str, directory: Path | None = None,
              now: datetime | None = None, timeout_s: float = 15.0) -> list[DemoResult]:
    """Post each demo batch to ``<api_url>/v1/batch``; returns what the API answered."""
    auth = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
    results = []
    for name, body in shift_to(load_story(directory), now or datetime.now(UTC)):
        request = urllib.request.Request(
            f"{api_url.rstrip('/')}/v1/batch",
            data=json.dumps({**body, "sentAt": _iso(now or datetime.now(UTC))}).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}",
                     "User-Agent": "cdp-local-demo"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                results.append(DemoResult(name, len(body["batch"]), response.status,
                                          response.read().decode("utf-8", "replace")))
        except urllib.error.HTTPError as error:
            results.append(DemoResult(name, len(body["batch"]), error.code,
                                      error.read().decode("utf-8", "replace")))
    return results
