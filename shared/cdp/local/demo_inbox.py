"""The demo's receiving end: a local HTTP server standing in for a customer's webhook
endpoint and a Slack incoming webhook, printing one line per delivery, so ``cdp local``
shows activation working (``examples/destinations/demo.json``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cdp.activation.destinations import DestinationConfig, parse_destinations
from cdp.local.functions import repo_root

DEMO_SECRETS_TEMPLATE = {"cdp/demo/webhook-signing": "demo-signing-secret",
                         "/cdp/demo/slack-webhook-url": "{inbox}/slack"}
DEMO_BUCKET = "cdp-demo-exports"


def describe(path: str, body: Any) -> str:
    """One line for the console: what arrived, never more than a person's ids."""
    if not isinstance(body, dict):
        return f"{path}: {str(body)[:80]}"
    if path.endswith("/slack"):
        text = json.dumps(body.get("text") or body.get("blocks") or body)[:120]
        return f"Slack alert: {text}"
    profile = body.get("profile") or {}
    who = (profile.get("identifiers") or {}).get("user_id") or [body.get("profile_id")]
    if body.get("kind") == "audience_membership":
        return f"webhook: {body.get('event')} {body.get('audience_id')} ({who[0]})"
    return f"webhook: {body.get('kind')} {body.get('message_id')}"


class DemoInbox:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: Callable[[str], None] = print) -> None:
        self.received: list[tuple[str, Any]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
                inbox.received.append((self.path, body))
                echo(f"[demo inbox] {describe(self.path, body)}")
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-inbox", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DemoInbox:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def demo_destinations(inbox_url: str, path: Path | None = None) -> tuple[list[DestinationConfig], dict[str, str]]:
    """The demo's destinations and secrets, pointed at the inbox."""
    text = (path or repo_root() / "examples" / "destinations" / "demo.json").read_text(encoding="utf-8")
    destinations = parse_destinations(json.loads(text.replace("{inbox}", inbox_url)))
    secrets = {name: value.replace("{inbox}", inbox_url) for name, value in DEMO_SECRETS_TEMPLATE.items()}
    return destinations, secrets
