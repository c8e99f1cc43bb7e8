"""Running handlers in-process like the Lambda runtime: JSON in and out, errors, environments."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cdp import resources
from cdp.local.functions import LocalFunction, functions_dir, local_function_name, repo_root


def test_the_handler_gets_a_copy_of_the_event_through_json() -> None:
    original = {"list": [1, 2], "nested": {"a": 1}}

    def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        event["list"].append(3)
        return {"seen": event}

    invocation = LocalFunction("f", lambda _i: handler).invoke(original)

    assert invocation.result == {"seen": {"list": [1, 2, 3], "nested": {"a": 1}}}
    assert original == {"list": [1, 2], "nested": {"a": 1}}


def test_a_raised_exception_is_a_failed_invocation() -> None:
    def handler(_event: dict[str, Any], _context: Any) -> None:
        raise KeyError("missing")

    invocation = LocalFunction("f", lambda _i: handler).invoke({})

    assert invocation.failed
    assert invocation.error_type == "KeyError"


def test_a_result_lambda_cannot_serialize_is_a_marshal_error() -> None:
    invocation = LocalFunction("f", lambda _i: lambda _e, _c: {"when": object()}).invoke({})

    assert invocation.error_type == "Runtime.MarshalError"


def test_an_invocation_over_the_function_timeout_is_reported_as_timed_out() -> None:
    def slow(_event: dict[str, Any], _context: Any) -> None:
        time.sleep(0.05)

    invocation = LocalFunction("f", lambda _i: slow, timeout_s=0.01).invoke({})

    assert invocation.error_type == "Sandbox.Timedout"


def test_the_context_carries_what_powertools_reads() -> None:
    seen: dict[str, Any] = {}

    def handler(_event: dict[str, Any], context: Any) -> None:
        seen.update(name=context.function_name, memory=context.memory_limit_in_mb,
                    arn=context.invoked_function_arn, request=context.aws_request_id,
                    remaining=context.get_remaining_time_in_millis(), version=context.function_version)

    invocation = LocalFunction("cdp-collector", lambda _i: handler, memory_mb=512, timeout_s=10).invoke({})

    assert seen["name"] == "cdp-collector"
    assert seen["memory"] == 512
    assert seen["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:cdp-collector"
    assert seen["request"] == invocation.request_id
    assert 9_000 < seen["remaining"] <= 10_000
    assert seen["version"] == "$LATEST"


def test_concurrent_invocations_get_their_own_environment() -> None:
    created: list[int] = []
    inside = threading.Barrier(2, timeout=5)

    def factory(index: int) -> Any:
        created.append(index)

        def handler(_event: dict[str, Any], _context: Any) -> int:
            inside.wait()  # both invocations are running at once
            return index
        return handler

    function = LocalFunction("f", factory, max_concurrency=2)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(function.invoke({}).result)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(created) == [0, 1]
    assert sorted(results) == [0, 1]


def test_handlers_load_from_the_functions_folder_by_file_path(tmp_path: Path) -> None:
    folder = tmp_path / "collector"
    folder.mkdir()
    (folder / "handler.py").write_text("def handler(event, context):\n    return {'module': __name__}\n")

    function = LocalFunction.from_spec(resources.COLLECTOR_FUNCTION, tmp_path)

    assert function.name == "cdp-collector"
    assert function.memory_mb == resources.COLLECTOR_FUNCTION.memory_mb
    assert function.timeout_s == resources.COLLECTOR_FUNCTION.timeout_s
    assert function.invoke({}).result["module"].startswith("cdp_fn_collector")


def test_a_missing_handler_file_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stream_consumer"):
        LocalFunction.from_spec(resources.STREAM_CONSUMER_FUNCTION, tmp_path)


def test_the_functions_folder_defaults_to_the_checkout_and_can_be_overridden(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDP_FUNCTIONS_DIR", raising=False)
    assert functions_dir() == repo_root() / "functions"
    assert (repo_root() / "shared" / "cdp" / "resources.py").is_file()
    monkeypatch.setenv("CDP_FUNCTIONS_DIR", str(tmp_path))
    assert functions_dir() == tmp_path
    assert local_function_name(resources.STREAM_CONSUMER_FUNCTION) == "cdp-stream-consumer"
