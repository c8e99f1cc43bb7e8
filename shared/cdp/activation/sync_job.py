"""One destination's scheduled batch sync (``cdp.activation.sync``) over its audiences.

The schedule invokes the destination's sync function; each of the destination's
audiences is synced in turn (adds and removes since its last sync, everything the first
time) through the destination's own ``send``, with the profiles read and consent checked
as for real-time changes (``DestinationWorker.send_messages``). A sync stopped by the
invocation's deadline is continued by another invocation (the handler invokes itself);
one stopped because the destination asked to retry later waits for its ``Retry-After``
or the next scheduled run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdp.activation.destinations import DestinationConfig
from cdp.activation.sync import BatchSync, Deliver, SyncResult

# Seconds an invocation must have left to start another audience's sync.
START_MARGIN_S = 60.0


# Writes an audience's full member file after its sync (the S3 export): (audience, sync id) -> a summary.
FullExport = Callable[[str, str], dict[str, Any]]


@dataclass
class DestinationSyncResult:
    results: dict[str, SyncResult] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)  # audiences left for the continuation
    full_exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def continue_now(self) -> bool:
        """Whether another invocation should carry on at once (the deadline stopped this one)."""
        return bool(self.not_started) or any(r.outcome == "stopped" and r.reason == "deadline"
                                             for r in self.results.values())

    def summary(self) -> dict[str, Any]:
        return {"audiences": {aid: {"outcome": r.outcome, "sync_id": r.sync_id, "reason": r.reason,
                                    **r.counts.as_dict(),
                                    **({"full_export": self.full_exports[aid]} if aid in self.full_exports else {})}
                              for aid, r in self.results.items()},
                "not_started": self.not_started, "continue": self.continue_now}


def sync_destination(config: DestinationConfig, sync: BatchSync, deliver: Deliver,
                     deadline: Callable[[], float], audiences: list[str] | None = None,
                     full_export: FullExport | None = None) -> DestinationSyncResult:
    """Sync each audience (``audiences``: a subset, e.g. a continuation's) while time
    allows; after each completed sync, ``full_export`` (if given) writes the audience's
    full member file, named by the sync's id (a failure is reported, not raised: the next
    sync writes a new one)."""
    outcome = DestinationSyncResult()
    for audience_id in audiences if audiences is not None else config.audiences:
        if audience_id not in config.audiences:
            continue
        if outcome.not_started or deadline() < START_MARGIN_S:
            outcome.not_started.append(audience_id)
            continue
        result = outcome.results[audience_id] = sync.run(config.id, audience_id, config.effective_batch_size,
                                                         deliver, deadline)
        if full_export is not None and result.outcome == "done" and result.sync_id:
            try:
                outcome.full_exports[audience_id] = full_export(audience_id, result.sync_id)
            except Exception as exc:  # the file is aborted; the sync itself is done
                outcome.full_exports[audience_id] = {"error": type(exc).__name__}
    return outcome
