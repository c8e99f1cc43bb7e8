"""Running a Lambda handler in-process the way the Lambda runtime would.

A ``LocalFunction`` loads ``functions/<folder>/handler.py`` by file path into
execution environments, one invocation at a time per environment (as Lambda does),
with more environments created when invocations overlap. The event and the result
go through JSON, as they do between Lambda and its caller, so a handler can neither
see objects the caller keeps nor return something Lambda could not serialize.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from cdp.local.lambda_events import lambda_function_arn
from cdp.resources import FunctionSpec

log = logging.getLogger(__name__)

# Lambda's limit for a synchronous invocation's request and response.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
FUNCTIONS_DIR_ENV = "CDP_FUNCTIONS_DIR"

Handler = Callable[[dict[str, Any], Any], Any]


def repo_root() -> Path:
    """The checkout that holds ``shared/cdp`` (the package is installed editable)."""
    import cdp

    return Path(cdp.__file__).resolve().parents[2]


def functions_dir(override: str | Path | None = None) -> Path:
    """Where ``<folder>/handler.py`` live: the argument, ``$CDP_FUNCTIONS_DIR`` or ``<repo>/functions``."""
    chosen = override or os.environ.get(FUNCTIONS_DIR_ENV)
    return Path(chosen) if chosen else repo_root() / "functions"


def local_function_name(spec: FunctionSpec) -> str:
    """The function's name in the local stack: ``cdp-<folder>`` with dashes."""
    return "cdp-" + spec.folder.replace("_", "-")


@dataclass
class LambdaContext:
    """The context object the Python runtime passes to a handler (the parts used)."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: float = 3.0
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self._deadline:
            self._deadline = time.monotonic() + self.timeout_s
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        if not self.log_stream_name:
            self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(path: Path, module_name: str) -> Handler:
    """Import a handler file as a fresh module and return its ``handler`` callable."""
    if not path.is_file():
        raise FileNotFoundError(f"no Lambda handler at {path}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise ImportError(f"{path} defines no callable `handler`")
    return handler  # type: ignore[no-any-return]


def _free_module_name(name: str) -> str:
    # Another loader (a test fixture) may hold the plain name; never replace its module.
    candidate, suffix = name, 0
    while candidate in sys.modules:
        suffix += 1
        candidate = f"{name}_local{suffix}"
    return candidate


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation: a JSON result, or the error Lambda would report."""

    request_id: str
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error_type is not None


class LocalFunction:
    """A Lambda function run in-process.

    ``handler_factory`` returns a fresh handler per execution environment (for the
    real functions: the handler file imported once per environment). Overlapping
    invocations get separate environments, up to ``max_concurrency``; later ones
    wait for a free environment.
    """

    def __init__(self, name: str, handler_factory: Callable[[int], Handler], *, memory_mb: int = 128,
                 timeout_s: float = 3.0, max_concurrency: int = 8) -> None:
        self.name = name
        self.arn = lambda_function_arn(name)
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._factory = handler_factory
        self._max = max_concurrency
        self._idle: queue.LifoQueue[Handler] = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: FunctionSpec, directory: str | Path | None = None,
                  max_concurrency: int = 8, name: str | None = None) -> LocalFunction:
        """The function of ``spec``, its handler loaded from ``<functions dir>/<folder>/handler.py``
        (``name``: when several functions share the code, as destinations do)."""
        path = functions_dir(directory) / spec.folder / "handler.py"
        if not path.is_file():
            raise FileNotFoundError(
                f"no Lambda handler at {path} (set --functions-dir or ${FUNCTIONS_DIR_ENV})")
        base = f"cdp_fn_{spec.folder}"

        def factory(index: int) -> Handler:
            return load_handler(path, _free_module_name(base if index == 0 else f"{base}_{index}"))

        return cls(name or local_function_name(spec), factory, memory_mb=spec.memory_mb,
                   timeout_s=spec.timeout_s, max_concurrency=max_concurrency)

    def warm_up(self) -> None:
        """Create the first execution environment now (import errors surface at start)."""
        self._release(self._acquire())

    def _acquire(self) -> Handler:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            index = self._created
            create = index < self._max
            if create:
                self._created += 1
        if not create:
            return self._idle.get()
        try:
            return self._factory(index)
        except BaseException:
            with self._lock:
                self._created -= 1
            raise

    def _release(self, handler: Handler) -> None:
        self._idle.put(handler)

    def context(self, request_id: str | None = None) -> LambdaContext:
        return LambdaContext(function_name=self.name, memory_limit_in_mb=self.memory_mb,
                             invoked_function_arn=self.arn, aws_request_id=request_id or str(uuid.uuid4()),
                             timeout_s=self.timeout_s)

    def invoke(self, event: dict[str, Any]) -> Invocation:
        """Invoke synchronously; handler exceptions come back as an ``Unhandled`` error."""
        request_id = str(uuid.uuid4())
        payload = json.dumps(event)
        if len(payload.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            return Invocation(request_id, error_type="RequestEntityTooLargeException",
                              error_message=f"request payload exceeds {MAX_PAYLOAD_BYTES} bytes")
        handler = self._acquire()
        started = time.monotonic()
        try:
            result = handler(json.loads(payload), self.context(request_id))
        except Exception as exc:
            duration = time.monotonic() - started
            log.warning("%s %s failed: %s", self.name, request_id,
                        "".join(traceback.format_exception(exc)).rstrip())
            return Invocation(request_id, error_type=type(exc).__name__, error_message=str(exc),
                              duration_s=duration)
        finally:
            self._release(handler)
        duration = time.monotonic() - started
        try:
            encoded = json.dumps(result)
        except (TypeError, ValueError) as exc:
            return Invocation(request_id, error_type="Runtime.MarshalError",
                              error_message=f"Unable to marshal response: {exc}", duration_s=duration)
        if duration > self.timeout_s:
            # The handler cannot be stopped mid-way in-process; report what Lambda would.
            log.warning("%s %s ran %.2f s, over its %.0f s timeout", self.name, request_id, duration,
                        self.timeout_s)
            return Invocation(request_id, error_type="Sandbox.Timedout",
                              error_message=f"Task timed out after {self.timeout_s:.2f} seconds",
                              duration_s=duration)
        if len(encoded.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            return Invocation(request_id, error_type="ResponseSizeTooLarge",
                              error_message=f"response payload exceeds {MAX_PAYLOAD_BYTES} bytes",
                              duration_s=duration)
        return Invocation(request_id, result=json.loads(encoded), duration_s=duration)
