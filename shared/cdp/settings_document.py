"""The analytics.js (analytics-next) settings document served for a write key."""

from __future__ import annotations

from typing import Any


def analytics_js_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """What Segment's CDN returns at /v1/projects/{writeKey}/settings, pointed at us.

    ``apiHost`` is host + path without the scheme, as analytics-next expects
    (e.g. ``api.example.com/v1``); ``protocol`` is ``https`` or ``http``.
    """
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{api_host}/v1",
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
