"""EventBridge schedule rules, emulated: a thread invoking a function every period.

The event is the one a schedule rule sends (``eventbridge_scheduled_event``); the
invocation goes through ``LocalFunction.invoke`` like every other, so the handler runs
as deployed. A failed invocation is logged and left to the next tick (as the deployed
rules' functions do after their retries).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.local.lambda_events import eventbridge_scheduled_event

log = logging.getLogger(__name__)


class Invocable(Protocol):
    def invoke(self, event: dict[str, Any]) -> Any: ...


@dataclass
class ScheduleStats:
    invocations: int = 0
    failures: int = 0


class LocalSchedule:
    """Invokes ``function`` every ``period_s`` seconds (the first time after ``first_after_s``)."""

    def __init__(self, rule_name: str, function: Invocable, period_s: float,
                 first_after_s: float | None = None, target_input: dict[str, Any] | None = None) -> None:
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self.rule_name = rule_name
        self.period_s = period_s
        self._function = function
        self._first_after = period_s if first_after_s is None else first_after_s
        # A target's constant input (RuleTargetInput) replaces the scheduled event, as in EventBridge.
        self._input = target_input
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = ScheduleStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"schedule-{self.rule_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop ticking; waits for a running invocation (up to ``timeout``)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def tick(self) -> Any:
        """One invocation now, as the rule would make it."""
        event = dict(self._input) if self._input is not None else eventbridge_scheduled_event(
            rule_name=self.rule_name, event_id=str(uuid.uuid4()), time=datetime.now(UTC))
        outcome = self._function.invoke(event)
        self.stats.invocations += 1
        if getattr(outcome, "failed", False):
            self.stats.failures += 1
            log.warning("scheduled invocation of %s failed: %s %s", self.rule_name,
                        getattr(outcome, "error_type", ""), getattr(outcome, "error_message", ""))
        return outcome

    def _run(self) -> None:
        wait = self._first_after
        while not self._stopping.wait(wait):
            try:
                self.tick()
            except Exception:  # the emulated rule must outlive one bad invocation
                log.exception("scheduled invocation of %s could not be made", self.rule_name)
            wait = self.period_s
