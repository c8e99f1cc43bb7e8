"""A destination's far end for the activation benchmarks, in its own process.

    python -m bench.activation_fakes --port 8123

One HTTP server that answers at once, so no time of ours is spent waiting on it and none
of its CPU is counted as ours (it runs in another process):

* ``POST`` anywhere (a webhook, Slack) and ``POST`` / ``DELETE``
  ``/<version>/<audience>/users`` (Meta's Graph API "Custom Audience Users"): ``200`` with
  an empty body (``Content-Length: 0``) on a kept-alive HTTP/1.1 connection. With
  ``--answer-body`` the answer has a body, as real endpoints send (``{}``; Meta's success
  answer ``audience_id``, ``num_received``, ``num_invalid_entries``): the destinations in
  this checkout return a connection to urllib3's pool without reading a 2xx body, so the
  next request on it fails (see docs/benchmarks.md, "Activation"); the default keeps the
  measurements about our code;
* ``GET /stats``: requests, body bytes and rows (Meta) received so far;
* ``GET /received``: per request, its arrival time (``time.time()``, the same clock as
  the benchmark's), path and the ids a latency measure needs (``message_id``, the
  event's ``messageId``, ``kind``, ``transition``, the person's ``userId``) — kept only with
  ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from bench.moto_process import free_port


class _State:
    def __init__(self, keep: bool, answer_body: bool) -> None:
        self.answer_body = answer_body
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.rows = 0
        self.keep = keep
        self.received: list[dict[str, Any]] = []


def _summary(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    found = data.get("event")
    event: dict[str, Any] = found if isinstance(found, dict) else {}
    profile = data.get("profile") if isinstance(data.get("profile"), dict) else {}
    users = ((profile or {}).get("identifiers") or {}).get("user_id") or []
    return {"kind": data.get("kind"), "message_id": data.get("message_id"), "transition": data.get("transition"),
            "event_message_id": event.get("messageId"), "audience_id": data.get("audience_id"),
            "user_id": event.get("userId") or (users[0] if users else None)}


def make_server(port: int, keep: bool, answer_body: bool = False) -> ThreadingHTTPServer:
    state = _State(keep, answer_body)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _receive(self) -> None:
            arrived = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rows = 0
            answer: dict[str, Any] = {}
            if self.path.endswith("/users"):
                form = parse_qs(body.decode("ascii", errors="replace"))
                try:
                    rows = len(json.loads(form.get("payload", ["{}"])[0]).get("data", []))
                except ValueError:
                    rows = 0
                answer = {"audience_id": self.path.split("/")[-2], "session_id": "1", "num_received": rows,
                          "num_invalid_entries": 0, "invalid_entry_samples": {}}
            with state.lock:
                state.requests += 1
                state.bytes += len(body)
                state.rows += rows
                if state.keep:
                    state.received.append({"at": arrived, "path": self.path, **_summary(body)})
            self._answer(200, (answer or {}) if state.answer_body else None)

        do_POST = _receive
        do_DELETE = _receive

        def do_GET(self) -> None:
            with state.lock:
                if self.path == "/stats":
                    payload: Any = {"requests": state.requests, "bytes": state.bytes, "rows": state.rows}
                elif self.path == "/received":
                    payload = list(state.received)
                else:
                    payload = {}
            self._answer(200, payload)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


class FakeEndpoint:
    """The server above, started as a child process on a free port."""

    def __init__(self, keep: bool = False, answer_body: bool = False) -> None:
        self._answer_body = answer_body
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._keep = keep
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> FakeEndpoint:
        command = [sys.executable, "-m", "bench.activation_fakes", "--port", str(self.port)]
        command += ["--keep"] if self._keep else []
        command += ["--answer-body"] if self._answer_body else []
        self._process = subprocess.Popen(command,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake endpoint did not answer on {self.url}")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, int]:
        return dict(self._get("/stats"))

    def received(self) -> list[dict[str, Any]]:
        return list(self._get("/received"))

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> FakeEndpoint:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep", action="store_true", help="keep each request's arrival time and ids")
    parser.add_argument("--answer-body", action="store_true", help="answer 2xx with a body, as real APIs do")
    args = parser.parse_args(argv)
    make_server(args.port, args.keep, args.answer_body).serve_forever()


if __name__ == "__main__":
    main()
