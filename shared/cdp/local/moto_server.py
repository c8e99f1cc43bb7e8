"""moto's server for the local stack: requests serialised, the local fixes applied, and
by default in a child process of its own.

The embedded stack runs every function in its own process; moto in the same process
would share one interpreter lock with them, so moto's CPU and the functions' would add up
on one core. ``MotoProcess`` runs ``MotoServer`` in a child process instead (``python -m
cdp.local.moto_server HOST PORT``): the stack only ever talks to moto over HTTP (boto3,
``/moto-api/reset``), so nothing else changes. The child exits when its standard input
closes, so it never outlives the stack's process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from cdp.local import moto_speedups


class _SerializedApp:
    """Runs moto's WSGI app one request at a time.

    moto's backends are not safe for concurrent requests (Kinesis can hand two
    concurrent PutRecord calls the same sequence number, DynamoDB conditions are
    checked and written in two steps); AWS is atomic per request, so locally each
    request runs alone.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            return list(self._app(environ, start_response))


class MotoServer(ThreadedMotoServer):
    """moto's threaded server, serializing requests and failing fast if the port is taken."""

    def __init__(self, ip_address: str, port: int) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self._start_error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            app = _SerializedApp(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True,
                                       request_handler=MotoRequestHandler)
        except BaseException as exc:  # e.g. the port is in use
            self._start_error = exc
            self._server_ready_event.set()
            return
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        super().start()
        if self._start_error is not None:
            # werkzeug exits (SystemExit) when the port is taken.
            why = "port in use" if isinstance(self._start_error, SystemExit) else str(self._start_error)
            raise OSError(f"cannot start moto on {self._ip_address}:{self._port}: {why}")


class MotoProcess:
    """``MotoServer`` in a child process, with the same small interface (start, stop,
    ``get_host_and_port``, ``running``)."""

    def __init__(self, ip_address: str, port: int) -> None:
        self._ip_address = ip_address
        self._port = port
        self._child: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "cdp.local.moto_server", self._ip_address, str(self._port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        try:
            started = json.loads(line) if line else {"error": "moto's process exited"}
        except ValueError:
            started = {"error": f"unexpected output: {line[:200]!r}"}
        if "port" not in started:
            self.stop()
            raise OSError(f"cannot start moto on {self._ip_address}:{self._port}: {started.get('error')}")
        self._port = int(started["port"])

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def get_host_and_port(self) -> tuple[str, int]:
        return self._ip_address, self._port

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """The child: serve until standard input closes; the first line out says the port."""
    host, port = (argv if argv is not None else sys.argv[1:])[:2]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto_speedups.apply()
    server = MotoServer(host, int(port))
    try:
        server.start()
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"port": server.get_host_and_port()[1]}), flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
