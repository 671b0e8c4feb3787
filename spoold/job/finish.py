"""Ending a job: final batch.json, then one rename to done/ or failed/, then the handlers hear of it.

Order matters for crash safety: batch.json (and the planned handler runs) are
committed inside processing/ first, so whatever directory the job is found
in, its batch.json is final and its handler runs are on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spoold.fsutil import atomic_write_json, fsync_dir
from spoold.job.batch import build_batch
from spoold.job.checkpoint import Checkpoint
from spoold.job.segments import discard
from spoold.job.validate import ValidationSummary
from spoold.spool.jobdir import JobDir, JobRecord
from spoold.spool.states import JobState, move_job

log = logging.getLogger(__name__)

FinishedHook = Callable[[JobDir, dict[str, Any], list[str] | None], object]


@dataclass
class FinishHooks:
    """What happens around the final rename; the daemon wires handlers and metrics here."""

    before_move: list[FinishedHook] = field(default_factory=list)
    after_move: list[FinishedHook] = field(default_factory=list)


@dataclass
class JobEnd:
    status: str  # completed | failed | cancelled
    reason: str | None = None
    line_errors: list[dict[str, Any]] = field(default_factory=list)


def finish_job(
    spool_root: Path,
    job: JobDir,
    record: JobRecord,
    end: JobEnd,
    *,
    node: str,
    model: str | None,
    metadata: dict[str, str],
    handlers: list[str] | None,
    checkpoint: Checkpoint | None,
    validation: ValidationSummary | None,
    chunk_size: int | None,
    hooks: FinishHooks | None = None,
    shards: list[dict[str, Any]] | None = None,
) -> tuple[JobDir, dict[str, Any]]:
    hooks = hooks or FinishHooks()
    record.status = end.status
    record.finished_at = time.time()
    record.open_attempt = False
    record.failure_reason = end.reason if end.status == "failed" else None
    job.save_record(record, sync_dir=False)  # the folders are fsynced once, before the move
    errors = None
    if end.status == "failed":
        errors = [{"code": "job_failed", "message": end.reason or "the job failed", "line": None}, *end.line_errors]
    batch = build_batch(
        record, end.status, node=node, model=model, metadata=metadata, checkpoint=checkpoint,
        validation=validation, chunk_size=chunk_size, errors=errors, shards=shards,
    )  # fmt: skip
    for path in (job.output, job.errors):
        path.touch(exist_ok=True)  # a finished job always has both files
    atomic_write_json(job.batch, batch, indent=2, sync_dir=False)
    for hook in hooks.before_move:
        hook(job, batch, handlers)
    # one fsync per folder makes every name above durable (merged results, job.json, batch.json,
    # handlers.json) before the move publishes the job: 2 fsyncs where each write would take one
    fsync_dir(job.state)
    fsync_dir(job.path)
    target = JobState.FAILED if end.status == "failed" else JobState.DONE
    final = JobDir(move_job(spool_root, job.path, JobState.PROCESSING, target))
    try:
        discard(final.path)  # merged into output.jsonl and errors.jsonl
    except OSError as exc:
        log.warning("could not remove the merged segments (%s)", exc.strerror, extra={"job": final.name})
    if end.status == "failed":
        log.error("failed: %s", end.reason, extra={"job": final.name})
    else:
        counts = batch["request_counts"]
        log.info(
            "%s: %d succeeded, %d failed -> %s", end.status,
            counts["completed"], counts["failed"], final.path, extra={"job": final.name},
        )  # fmt: skip
    for hook in hooks.after_move:
        hook(final, batch, handlers)
    return final, batch
