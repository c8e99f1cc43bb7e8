"""HTTP receivers the e2e stack's destinations deliver to: a customer's webhook endpoint
and a Slack incoming webhook, recording every request, answering as scripted."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when it arrived
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int  # what the receiver answered

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    """One server; ``script(path, [(status, headers), ...])`` makes the next requests to a
    path answer those (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, deque[tuple[int, dict[str, str]]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    script = receiver._scripts.get(self.path)
                    status, headers = script.popleft() if script else (200, {})
                    receiver.requests.append(Received(time.time(), self.path, dict(self.headers), raw, status))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                answer = b"ok" if status < 300 else b"invalid_payload"
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def script(self, path: str, answers: list[tuple[int, dict[str, str]]]) -> None:
        with self._lock:
            self._scripts[path] = deque(answers)

    def received(self, path: str, accepted_only: bool = True) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (r.status < 300 or not accepted_only)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
