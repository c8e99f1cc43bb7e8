"""A full audience file for the S3 export destination: every current member with the
destination's mapped fields, streamed from the ``members`` index through the profile
reads into an ``ExportFileWriter`` (a multipart upload: memory holds a page of members
and about one part), followed by its manifest. Run after a successful batch sync, named
by the sync's id; members are checked as entries are (suppression, filters, consent).
A run that cannot finish (its deadline, an error) aborts the upload: no partial file is
left, and the next sync writes a new one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from cdp.activation.s3_export import ExportedFile, ExportFileWriter, audience_row
from cdp.activation.worker import DestinationWorker
from cdp.aws.sync_store import DynamoMembers

PROFILE_PAGE = 100  # profiles read together (one BatchGetItem round)
STOP_MARGIN_S = 20.0


class ExportOutOfTime(RuntimeError):
    """The invocation's deadline came before the file was complete (it was aborted)."""


def _pages(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    while page := list(islice(ids, size)):
        yield page


def write_full_export(worker: DestinationWorker, s3: Any, members: DynamoMembers, audience_id: str, run_id: str,
                      deadline: Callable[[], float], now: datetime | None = None) -> ExportedFile:
    config = worker.config
    settings = config.settings
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    writer = ExportFileWriter.for_audience(
        s3, bucket=settings.bucket, prefix=settings.prefix,  # type: ignore[union-attr]
        destination_id=config.id, audience_id=audience_id, run_id=run_id, kind="full",
        format=settings.format, field_names=sorted(set(config.field_mapping.values())))  # type: ignore[union-attr]
    with writer:
        for page in _pages(members.members(audience_id, None), PROFILE_PAGE):
            if deadline() < STOP_MARGIN_S:
                raise ExportOutOfTime(f"full export of {audience_id} stopped by the deadline")
            writer.write_rows(audience_row(pid, audience_id, "add", None, at, view.get("fields"))
                              for pid, view in worker.member_views(audience_id, page))
        return writer.close()
