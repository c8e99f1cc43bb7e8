"""Realistic Segment traffic, built by the real Python SDK (segment-analytics-python).

Events are made by ``segment.analytics.Client`` with ``send=False`` (so messageId,
timestamp, context.library and the SDK's cleaning are exactly what the SDK sends) and
carry the browser context that server-side integrations usually forward (page,
userAgent, locale, campaign). Requests are shaped like the SDK's ``/v1/batch`` POST:
``{"batch": [...], "sentAt": ..., "writeKey": ...}`` with HTTP Basic auth.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from segment.analytics import Client
from segment.analytics.request import DatetimeSerializer
from segment.analytics.version import VERSION

# Share of each call type in the generated traffic (sums to 1).
TRAFFIC_MIX: dict[str, float] = {
    "track": 0.60,
    "page": 0.20,
    "identify": 0.10,
    "screen": 0.05,
    "group": 0.03,
    "alias": 0.02,
}
# analytics-python flushes at most 100 events per request (Consumer upload_size).
SDK_BATCH_SIZE = 100

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
)
_PAGES = (
    ("/", "Acme - Outdoor gear"),
    ("/products/trail-runner-2", "Trail Runner 2 | Acme"),
    ("/collections/jackets", "Jackets | Acme"),
    ("/cart", "Your cart | Acme"),
    ("/checkout/payment", "Checkout | Acme"),
    ("/blog/how-to-choose-a-tent", "How to choose a tent"),
    ("/account/orders", "Your orders | Acme"),
    ("/search", "Search results | Acme"),
)
_REFERRERS = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://t.co/",
    "",
    "https://acme.example/",
)
_LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES")
_TRACK_EVENTS = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Products Searched",
    "Signed Up",
    "Button Clicked",
    "Video Playback Started",
)
_PRODUCTS = (
    ("sku-10041", "Trail Runner 2", "Footwear", 129.0),
    ("sku-20877", "Alpine Shell Jacket", "Jackets", 249.5),
    ("sku-31102", "Ultralight Tent 2P", "Camping", 399.0),
    ("sku-40210", "Merino Base Layer", "Apparel", 79.9),
    ("sku-55013", "Trekking Poles", "Accessories", 59.0),
)
_SCREENS = ("Home", "Product Detail", "Cart", "Settings", "Order History")
_PLANS = ("free", "pro", "business")


@dataclass(frozen=True)
class SdkRequest:
    """One POST /v1/batch as analytics-python sends it."""

    body: str
    headers: dict[str, str]
    events: int


class SegmentTrafficGenerator:
    """Deterministic traffic (seeded) over a pool of people, 65 % of them identified."""

    def __init__(self, write_key: str, seed: int = 7, people: int = 5000, start: datetime | None = None) -> None:
        self._rng = random.Random(seed)
        self._write_key = write_key
        self._client = Client(write_key=write_key, send=False, sync_mode=True)
        self._people = people
        self._start = start or datetime.now(UTC) - timedelta(minutes=5)
        self._sequence = 0

    def events(self, count: int) -> list[dict[str, Any]]:
        """``count`` SDK messages in the proportions of TRAFFIC_MIX."""
        kinds = list(TRAFFIC_MIX)
        weights = [TRAFFIC_MIX[k] for k in kinds]
        return [self._event(self._rng.choices(kinds, weights)[0]) for _ in range(count)]

    def requests(self, events: list[dict[str, Any]], batch_size: int = SDK_BATCH_SIZE) -> Iterator[SdkRequest]:
        """The SDK's flushes: ``batch_size`` events per request, sentAt at flush time."""
        auth = "Basic " + base64.b64encode(f"{self._write_key}:".encode()).decode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"analytics-python/{VERSION}",
            "Authorization": auth,
        }
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            sent_at = self._sent_at(start // batch_size, batch)
            body = {"batch": batch, "sentAt": sent_at.isoformat(), "writeKey": self._write_key}
            yield SdkRequest(json.dumps(body, cls=DatetimeSerializer), headers, len(batch))

    def _sent_at(self, batch_index: int, batch: list[dict[str, Any]]) -> datetime:
        """When the SDK flushed this batch: one batch per second from the start."""
        return self._start + timedelta(seconds=batch_index + 1)

    # --- one event ---------------------------------------------------------------

    def _person(self) -> tuple[str | None, str]:
        n = self._rng.randrange(self._people)
        anonymous_id = f"{n:08x}-7f3c-4d2a-9b1e-{n * 7919 % 10**12:012d}"
        user_id = f"user_{n:06d}" if n % 100 < 65 else None
        return user_id, anonymous_id

    def _web_context(self) -> dict[str, Any]:
        path, title = self._rng.choice(_PAGES)
        search = self._rng.choice(("", "", "?utm_source=newsletter&utm_medium=email", "?q=tent"))
        context: dict[str, Any] = {
            "page": {
                "path": path,
                "referrer": self._rng.choice(_REFERRERS),
                "search": search,
                "title": title,
                "url": f"https://acme.example{path}{search}",
            },
            "userAgent": self._rng.choice(_USER_AGENTS),
            "locale": self._rng.choice(_LOCALES),
        }
        if search.startswith("?utm"):
            context["campaign"] = {"name": "spring_sale", "source": "newsletter", "medium": "email"}
        return context

    def _app_context(self) -> dict[str, Any]:
        return {
            "app": {"name": "Acme", "version": "4.12.0", "build": "4120"},
            "device": {"manufacturer": "Apple", "model": "iPhone15,2", "type": "ios"},
            "os": {"name": "iOS", "version": "17.4.1"},
            "network": {"wifi": self._rng.random() < 0.6, "carrier": "T-Mobile"},
            "screen": {"width": 393, "height": 852, "density": 3},
            "locale": self._rng.choice(_LOCALES),
        }

    def _timestamp(self) -> datetime:
        self._sequence += 1
        return self._start + timedelta(milliseconds=self._sequence * 3)

    def _product(self) -> dict[str, Any]:
        sku, name, category, price = self._rng.choice(_PRODUCTS)
        return {
            "product_id": sku,
            "name": name,
            "category": category,
            "price": price,
            "quantity": self._rng.randint(1, 3),
        }

    def _track_properties(self, name: str) -> dict[str, Any]:
        if name in ("Product Viewed", "Product Added"):
            return {**self._product(), "position": self._rng.randint(1, 24)}
        if name in ("Checkout Started", "Order Completed"):
            products = [self._product() for _ in range(self._rng.randint(1, 2))]
            total = round(sum(p["price"] * p["quantity"] for p in products), 2)
            return {
                "order_id": f"ord_{self._rng.randrange(10**9):09d}",
                "total": total,
                "revenue": total,
                "shipping": 4.99,
                "tax": round(total * 0.08, 2),
                "currency": "USD",
                "products": products,
            }
        if name == "Products Searched":
            return {"query": self._rng.choice(("tent", "rain jacket", "trail shoes"))}
        if name == "Signed Up":
            return {"method": "email", "plan": self._rng.choice(_PLANS)}
        if name == "Video Playback Started":
            return {
                "session_id": f"vs_{self._rng.randrange(10**8)}",
                "content_asset_id": "vid_0042",
                "position": 0,
                "total_length": 312,
                "sound": 80,
                "full_screen": False,
            }
        return {"button": self._rng.choice(("buy", "subscribe", "share")), "location": "hero"}

    def _event(self, kind: str) -> dict[str, Any]:
        user_id, anonymous_id = self._person()
        timestamp = self._timestamp()
        c = self._client
        if kind == "track":
            name = self._rng.choice(_TRACK_EVENTS)
            _, msg = c.track(
                user_id=user_id,
                anonymous_id=anonymous_id,
                event=name,
                properties=self._track_properties(name),
                context=self._web_context(),
                timestamp=timestamp,
            )
        elif kind == "page":
            context = self._web_context()
            page = context["page"]
            _, msg = c.page(
                user_id=user_id,
                anonymous_id=anonymous_id,
                name=page["title"],
                properties={"path": page["path"], "url": page["url"]},
                context=context,
                timestamp=timestamp,
            )
        elif kind == "identify":
            n = self._rng.randrange(self._people)
            traits = {
                "email": f"person{n}@example.com",
                "name": f"Person {n}",
                "plan": self._rng.choice(_PLANS),
                "createdAt": "2025-03-14T09:26:53.589Z",
                "logins": self._rng.randint(1, 400),
                "city": "Berlin",
            }
            _, msg = c.identify(
                user_id=user_id or f"user_{n:06d}",
                anonymous_id=anonymous_id,
                traits=traits,
                context=self._web_context(),
                timestamp=timestamp,
            )
        elif kind == "screen":
            _, msg = c.screen(
                user_id=user_id,
                anonymous_id=anonymous_id,
                name=self._rng.choice(_SCREENS),
                category="App",
                properties={"from": "tab_bar", "variant": "b"},
                context=self._app_context(),
                timestamp=timestamp,
            )
        elif kind == "group":
            _, msg = c.group(
                user_id=user_id or "user_000001",
                anonymous_id=anonymous_id,
                group_id=f"acct_{self._rng.randrange(500):04d}",
                traits={
                    "name": "Example Corp",
                    "industry": "Retail",
                    "employees": 120,
                    "plan": "business",
                    "website": "https://example.com",
                },
                context=self._web_context(),
                timestamp=timestamp,
            )
        else:  # alias: an anonymous visitor signs up
            _, msg = c.alias(
                previous_id=anonymous_id,
                user_id=f"user_{self._rng.randrange(10**6):06d}",
                context=self._web_context(),
                timestamp=timestamp,
            )
        return msg  # type: ignore[no-any-return]


def event_size(event: dict[str, Any]) -> int:
    """Bytes of one event as the SDK serialises it in the batch."""
    return len(json.dumps(event, cls=DatetimeSerializer).encode("utf-8"))
