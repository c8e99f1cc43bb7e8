"""An HTTP API (API Gateway v2) in front of local functions: routes, ``$default``, payload 2.0.

Each request is routed as API Gateway routes it (a matching ``<METHOD> <path>`` route,
else ``$default``; ``cdp.resources.HTTP_ROUTES`` lists them), becomes the event API
Gateway would send (``lambda_events.http_api_event``), and the function's response is
turned back into HTTP the way API Gateway does it. Like an HTTP API, the path is handed
over percent-decoded (``/profiles/phone:%2B1555`` arrives as ``/profiles/phone:+1555``).
Only ``GET /health`` is answered by the gateway itself, to say whether the whole local
stack is ready.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from cdp.local.functions import Invocation
from cdp.local.lambda_events import apigw_request_id, http_api_event

log = logging.getLogger(__name__)

# API Gateway's payload limit for HTTP APIs.
MAX_REQUEST_BYTES = 10 * 1024 * 1024

Invoke = Callable[[dict[str, Any]], Invocation]


def match_route(route_key: str, method: str, path: str) -> dict[str, str] | None:
    """The path variables if ``<METHOD> <path>`` matches the request, else None.

    Segments are literal, ``{name}`` (one segment) or, last, ``{name+}`` (the rest of
    the path, at least one character), as API Gateway HTTP API route keys are.
    """
    route_method, _, route_path = route_key.partition(" ")
    if route_method.upper() not in (method.upper(), "ANY"):
        return None
    pattern, parts = route_path.split("/"), path.split("/")
    variables: dict[str, str] = {}
    for index, segment in enumerate(pattern):
        if segment.startswith("{") and segment.endswith("+}"):
            rest = "/".join(parts[index:])
            if index != len(pattern) - 1 or not rest:
                return None
            variables[segment[1:-2]] = rest
            return variables
        if index >= len(parts):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            if not parts[index]:
                return None
            variables[segment[1:-1]] = parts[index]
        elif segment != parts[index]:
            return None
    return variables if len(parts) == len(pattern) else None


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    gateway: HttpApiGateway


class _Status(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestHandler(BaseHTTPRequestHandler):
    server: _GatewayServer
    protocol_version = "HTTP/1.1"
    server_version = "cdp-local-apigw"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError as exc:
            raise _Status(400, "Bad Request") from exc
        if size > MAX_REQUEST_BYTES:
            self._discard(size)
            raise _Status(413, "Request Entity Too Large")
        return self.rfile.read(size)

    def _discard(self, size: int) -> None:
        # Read (a bounded amount of) the refused body so the client sees the 413
        # instead of a connection reset while it is still sending.
        remaining = min(size, 16 * MAX_REQUEST_BYTES)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _Status(400, "Bad Request") from exc
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_REQUEST_BYTES:
                raise _Status(413, "Request Entity Too Large")
            body += self.rfile.read(size)
            self.rfile.readline(65537)

    def _handle(self) -> None:
        gateway = self.server.gateway
        request_id = apigw_request_id()
        try:
            body = self._read_body()
        except _Status as refused:
            self.close_connection = True
            self._send(refused.status, {"content-type": "application/json"},
                       json.dumps({"message": refused.message}).encode(), request_id)
            return
        url = urlsplit(self.path)
        if self.command == "GET" and url.path == "/health":
            ready = gateway.is_ready()
            health = {"status": "ok"} if ready else {"status": "starting"}
            self._send(200 if ready else 503, {"content-type": "application/json"},
                       json.dumps(health).encode(), request_id)
            return
        path = unquote(url.path or "/")
        route_key, invoke, variables = gateway.route(self.command, path)
        event = http_api_event(
            method=self.command,
            path=path,
            raw_query=url.query,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
            request_id=request_id,
            now=datetime.now(UTC),
            route_key=route_key,
            path_parameters=variables,
        )
        status, headers, payload = response_from_invocation(invoke(event))
        self._send(status, headers, payload, request_id)

    def _send(self, status: int, headers: dict[str, list[str]] | dict[str, str], body: bytes,
              request_id: str) -> None:
        self.send_response(status)
        names = set()
        for name, values in headers.items():
            names.add(name.lower())
            for value in [values] if isinstance(values, str) else values:
                self.send_header(name, value)
        if self.command == "HEAD":
            body = b""
        self.send_header("Content-Length", str(len(body)))
        if "apigw-requestid" not in names:
            self.send_header("Apigw-Requestid", request_id)
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

    def _refuse_method(self) -> None:
        # HTTP APIs route only GET/POST/PUT/PATCH/DELETE/HEAD/OPTIONS; other methods
        # never reach the function. Answer them with a JSON 405 rather than
        # http.server's HTML 501.
        self._send(405, {"content-type": "application/json", "allow": "GET, POST, OPTIONS"},
                   json.dumps({"message": f"method {self.command} is not supported"}).encode(),
                   uuid.uuid4().hex)

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, CONNECT, QUERY, ...): http.server looks up do_<METHOD>.
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)


def response_from_invocation(invocation: Invocation) -> tuple[int, dict[str, list[str]], bytes]:
    """Turn a function's result into status, headers and body, as API Gateway does.

    A function error is a 500; a result without ``statusCode`` is taken as the JSON
    body of a 200 (payload format 2.0 rules).
    """
    error = (500, {"content-type": ["application/json"]}, b'{"message":"Internal Server Error"}')
    if invocation.failed:
        if invocation.error_type == "RequestEntityTooLargeException":
            return 413, {"content-type": ["application/json"]}, b'{"message":"Request Entity Too Large"}'
        if invocation.error_type == "Sandbox.Timedout":
            return 503, {"content-type": ["application/json"]}, b'{"message":"Service Unavailable"}'
        return error
    result = invocation.result
    if not isinstance(result, dict) or "statusCode" not in result:
        body = result if isinstance(result, str) else json.dumps(result)
        return 200, {"content-type": ["application/json"]}, body.encode("utf-8")
    try:
        status = int(result["statusCode"])
        headers: dict[str, list[str]] = {}
        for name, value in (result.get("headers") or {}).items():
            headers.setdefault(name.lower(), []).append(str(value))
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers.setdefault(name.lower(), []).extend(str(v) for v in values)
        for cookie in result.get("cookies") or []:
            headers.setdefault("set-cookie", []).append(str(cookie))
        raw = result.get("body")
        if raw is None:
            payload = b""
        elif result.get("isBase64Encoded"):
            payload = base64.b64decode(raw)
        else:
            payload = str(raw).encode("utf-8")
    except (TypeError, ValueError, AttributeError):
        log.warning("malformed Lambda proxy response: %r", result)
        return error
    return status, headers, payload


class HttpApiGateway:
    """A threaded HTTP server that invokes a function with an HTTP API v2 event per request.

    ``routes`` are ``(route key, invoke)`` pairs tried in order; requests no route
    matches go to ``invoke`` (the ``$default`` route).
    """

    def __init__(self, invoke: Invoke, host: str = "127.0.0.1", port: int = 8080,
                 ready: Callable[[], bool] = lambda: True,
                 routes: Sequence[tuple[str, Invoke]] = ()) -> None:
        self._invoke = invoke
        self._routes = list(routes)
        self._ready = ready
        self._host = host
        self._port = port
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None

    def invoke(self, event: dict[str, Any]) -> Invocation:
        return self._invoke(event)

    def route(self, method: str, path: str) -> tuple[str, Invoke, dict[str, str]]:
        """The route key, function and path variables a request goes to."""
        for route_key, invoke in self._routes:
            variables = match_route(route_key, method, path)
            if variables is not None:
                return route_key, invoke, variables
        return "$default", self._invoke, {}

    def is_ready(self) -> bool:
        return self._ready()

    def start(self) -> None:
        server = _GatewayServer((self._host, self._port), _RequestHandler)
        server.gateway = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="cdp-local-apigw", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("gateway not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        return f"http://{host}:{self.port}"
