"""Making an active job's progress durable, and ending it. Runs on the job I/O thread.

Order for every cut: renew the lease (a job taken over must not be written),
append + fsync the records, renew again (a stall in the flush may have cost us
the job), then commit the checkpoint that names their length, then the live
batch.json. One thread runs all commits and ends in submission order, so a
job's cuts are committed in the order they were taken and its end comes last.
"""

from __future__ import annotations

import logging
import time

from spoold.engine.faults import one_line
from spoold.fsutil import atomic_write_json
from spoold.job.active import ActiveJob, Cut
from spoold.job.batch import build_batch
from spoold.job.checkpoint import save_checkpoint
from spoold.job.finish import JobEnd
from spoold.job.shards.plan import ShardDir
from spoold.job.shards.status import live_batch
from spoold.job.start import end_job, give_up_run
from spoold.spool import lease as leases

log = logging.getLogger(__name__)

LIVE_SECONDS = 1.0
"""A running job's live batch.json is rewritten at most this often (its progress for `status` and the API)."""


def renew(active: ActiveJob, force: bool = False) -> None:
    """Renew the job's lease if due; raises LeaseLost. `force`: check for a newer generation now
    even when no renewal is due (the fence before a commit writes; the timestamp waits its turn)."""
    with active.lease_lock:
        now = time.monotonic()
        if now - active.last_renew >= active.ctx.config.lease_seconds / 3:
            active.lease = leases.renew(active.job, active.lease)
            active.last_renew = now
        elif force:
            leases.check(active.job, active.lease)


def open_attempt(active: ActiveJob) -> None:
    """The job's first request went into the engine: from now on, a crash without progress counts against it.

    A job that sat claimed but unfed when the daemon died cannot have caused the crash.
    """
    if active.lost or active.trouble is not None:
        return
    try:
        active.record.open_attempt = True
        # the mark guards against this job crashing the daemon: a crashed process loses nothing it wrote,
        # so the folder needs no fsync; after a power cut (no fault of the job) the old record is read
        active.job.save_record(active.record, sync_dir=False)
    except Exception as exc:  # noqa: BLE001 - reported by close()
        active.trouble = exc


def commit(active: ActiveJob, cut: Cut, live: bool = True, final: bool = False, force_live: bool = False) -> None:
    """Make one cut durable. Never raises: sets `active.lost` if another daemon took the job,
    `active.trouble` on any other error (the main thread then ends this run of the job)."""
    if active.lost or active.trouble is not None:
        return
    try:
        _commit(active, cut, live, final, force_live)
    except leases.LeaseLost as exc:
        log.error("%s; leaving it to its new owner", exc, extra={"job": active.name})
        active.lost = True
    except Exception as exc:  # noqa: BLE001 - disk full, NFS trouble, or a bug: reported by close()
        active.trouble = exc


def _commit(active: ActiveJob, cut: Cut, live: bool, final: bool, force_live: bool) -> None:
    old = active.checkpoint
    if not cut.records and cut.next_line == old.next_line:
        renew(active)
        return
    renew(active, force=True)
    writer = active.writer
    writer.add_all(cut.records)
    output_bytes, errors_bytes = writer.flush()
    renew(active, force=True)
    tally = cut.tally
    checkpoint = old.model_copy(update=dict(
        next_line=cut.next_line, next_offset=cut.next_offset, done_above=cut.done_above,
        output_bytes=output_bytes, errors_bytes=errors_bytes,
        succeeded=old.succeeded + tally.succeeded, failed=old.failed + tally.failed,
        prompt_tokens=old.prompt_tokens + tally.prompt_tokens,
        completion_tokens=old.completion_tokens + tally.completion_tokens,
        chunks=old.chunks + 1,
    ))  # fmt: skip
    if not final:
        save_checkpoint(active.job.state, checkpoint)
    # final: the shard ends next and its outcome checkpoint names these records (a crash before
    # it cuts them as a torn tail and runs their lines again)
    active.checkpoint = checkpoint
    active.rate = (tally.succeeded + tally.failed) / cut.seconds
    active.ctx.hooks.chunk_committed(
        cut.seconds, tally.succeeded, tally.failed, tally.prompt_tokens, tally.completion_tokens, model=active.model
    )  # fmt: skip
    if not live:
        return  # the job ends next: its final batch.json follows at once
    now = time.monotonic()
    if not force_live and now - active.last_live < LIVE_SECONDS:
        return  # shown at most once a second: the checkpoint, not batch.json, is what a resume reads
    active.last_live = now
    if isinstance(active.job, ShardDir):
        batch = live_batch(active.job, active.ctx.node, active.model, active.sidecar.metadata, active.validation, active.chunk_size)
    else:
        batch = build_batch(
            active.record, "in_progress", node=active.ctx.node, model=active.model, metadata=active.sidecar.metadata,
            checkpoint=checkpoint, validation=active.validation, chunk_size=active.chunk_size, rate=active.rate,
        )  # fmt: skip
    atomic_write_json(active.job.batch, batch, durable=False, indent=2)  # live progress: the checkpoint is the record


def close(active: ActiveJob, cut: Cut, how: str, reason: str | None = None) -> str | None:
    """The job's last cut, then its end. `how`: completed | cancelled | stopped | retry (engine failure).

    Returns the job's final status (completed, cancelled, failed), or None when
    it stays in processing/ (stopped, retried later, or lost to another daemon).
    """
    # a shard's end writes its last checkpoint itself (with its outcome): its last cut needs none of its own
    commit(
        active, cut, live=how in ("stopped", "retry"), final=how in ("completed", "cancelled") and isinstance(active.job, ShardDir),
        force_live=True,
    )  # fmt: skip
    if active.lost:
        return None
    record = active.record
    record.run_seconds += time.monotonic() - active.started
    trouble = active.trouble
    if isinstance(trouble, OSError):  # not the job's fault: never counted; the daemon pauses and it resumes
        give_up_run(active.job, record, None, active.ctx.config)
        raise trouble
    if trouble is not None:
        log.debug("unexpected error", exc_info=trouble, extra={"job": active.name})
        how, reason = "retry", f"unexpected error: {one_line(trouble)}"
    if how == "stopped":
        give_up_run(active.job, record, None, active.ctx.config)
        log.info("stopped at line %d; it resumes from its checkpoint", active.checkpoint.next_line, extra={"job": active.name})
        return None
    if how == "retry":
        end = give_up_run(active.job, record, reason or "engine error", active.ctx.config)
        if end is None:
            return None
        return end_job(
            active.ctx,
            active.job,
            record,
            end,
            active.sidecar,
            active.model,
            active.checkpoint,
            active.validation,
            own_gen=active.lease.gen,
        )
    return end_job(
        active.ctx,
        active.job,
        record,
        JobEnd(how),
        active.sidecar,
        active.model,
        active.checkpoint,
        active.validation,
        own_gen=active.lease.gen,
    )
