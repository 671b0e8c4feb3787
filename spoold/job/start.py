"""From a claimed job to an active one: attempts, sidecar, model, the validating pass. Runs off the main thread.

`start_job` either returns an `ActiveJob` ready to be fed to the engine of its
model, or ends the job itself (failed, cancelled, finished before a crash)
and returns its final status, or None when the job stays in processing/
(stopped, or waiting for a retry).
"""

from __future__ import annotations

import errno
import logging
import os
import time

from spoold.config import Config
from spoold.engine.profiles import resolve_model
from spoold.errors import SidecarError, UnknownModel
from spoold.fsutil import atomic_write_json, read_json
from spoold.inputcheck import read_regular
from spoold.job.active import ActiveJob, JobContext
from spoold.job.checkpoint import Checkpoint, load_checkpoint
from spoold.job.finish import JobEnd, finish_job
from spoold.job.lines import LineError
from spoold.job.reader import read_lines
from spoold.job.records import error_record
from spoold.job.segments import merge
from spoold.job.shards.end import record_outcome, try_merge
from spoold.job.shards.plan import ShardDir, ShardPlan, cut_spans, load_plan, save_plan, shard_count, shard_dirs
from spoold.job.sidecar import Sidecar, parse_sidecar
from spoold.job.validate import ValidationInterrupted, ValidationSummary, fatal_reason, judge, validate_file
from spoold.job.writer import ResultWriter
from spoold.spool import lease as leases
from spoold.spool import nodelock
from spoold.spool.jobdir import JobDir, JobRecord

log = logging.getLogger(__name__)

UNREADABLE = (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT)
LONG_PASS_BYTES = 1 << 20
"""Inputs this large keep their validating pass's summary (validation.json); smaller ones validate again in
milliseconds when needed: a durable write fewer per job, which matters for thousands of one-line jobs."""
LIST_EVERY = 1000


class JobCorrupt(Exception):
    """The job's own files are inconsistent (results shorter than the checkpoint says): no retry helps."""


def start_job(ctx: JobContext, job: JobDir, lease: leases.Lease, fail_reason: str | None = None) -> ActiveJob | str | None:
    """Start a claimed or taken-over job, or one shard of a sharded job (a ShardDir)."""
    cfg = ctx.config
    shard = job if isinstance(job, ShardDir) else None
    if shard is None and load_plan(job) is not None:  # cut into shards already: only the merge is left at job level
        return try_merge(ctx, job, _merge_finisher(ctx), lease, held=True)
    rec = shard.load_or_new_record(JobDir(shard.path).load_record()) if shard else job.load_record()
    sidecar = Sidecar()
    if rec.status in ("completed", "failed", "cancelled"):  # finished, but the crash came before the final rename
        sidecar = _sidecar_or_default(job, ctx)
        return end_job(
            ctx, job, rec, JobEnd(rec.status, rec.failure_reason), sidecar, sidecar.model or cfg.engine.default_model, own_gen=lease.gen
        )
    checkpoint = load_checkpoint(job.state, shard.initial_checkpoint() if shard else None)
    counted = rec.open_attempt  # the record on disk says a run was open: it is rewritten before this run
    if rec.open_attempt:
        _count_unclean_end(ctx, job, rec, checkpoint)
    checkpoint = checkpoint.carried_to(lease.gen)  # this run appends to segments of its own generation
    fail_reason = rec.pending_failure or fail_reason  # e.g. an unsafe input found at claim time
    try:
        sidecar = _load_sidecar(job, ctx)
        model = sidecar.model or cfg.engine.default_model
        profile = resolve_model(model, ctx.profiles, cfg.engine.state_dir)  # an adapter's files are checked here
    except (SidecarError, UnknownModel) as exc:
        return end_job(ctx, job, rec, JobEnd("failed", str(exc)), sidecar, sidecar.model or cfg.engine.default_model, own_gen=lease.gen)
    if fail_reason:
        return end_job(ctx, job, rec, JobEnd("failed", fail_reason), sidecar, model, own_gen=lease.gen)
    if job.cancel_requested():
        return end_job(ctx, job, rec, JobEnd("cancelled"), sidecar, model, checkpoint, own_gen=lease.gen)
    if rec.failures >= cfg.engine.max_attempts:
        end = JobEnd("failed", f"{rec.last_error} ({rec.failures} times; engine.max_attempts is {cfg.engine.max_attempts})")
        return end_job(ctx, job, rec, end, sidecar, model, checkpoint, own_gen=lease.gen)
    validated = job.validation.exists()  # kept by a long pass of an earlier run (or this job's shards)
    size = _size(job.input)
    rec.attempt_mark = _progress_mark(job, checkpoint, validated)
    rec.attempt_node, rec.attempt_run = ctx.node, ctx.run_id  # who opens it: a run still alive never counts
    # no attempt is opened for the validating pass: lines are bounded (max_line_bytes), so reading them cannot be
    # what killed a daemon; only a death while the job's requests are in the engine counts (jobcommit.open_attempt)
    try:
        validation = _validation(ctx, job, model, profile.serves, validated, size)
        reason = fatal_reason(validation, sidecar.max_error_ratio)
        if reason and not shard:
            listing = _list_line_errors(ctx, job, model, validation, sidecar, profile.serves, lease.gen)
            if listing is None:
                raise ValidationInterrupted()
            return end_job(
                ctx,
                job,
                rec,
                JobEnd("failed", reason, [e.model_dump() for e in validation.errors]),
                sidecar,
                model,
                listing,
                validation,
                own_gen=lease.gen,
            )
    except ValidationInterrupted:
        give_up_run(job, rec, None, cfg)
        return None
    except OSError as exc:
        if exc.errno not in UNREADABLE:
            raise
        return end_job(ctx, job, rec, JobEnd("failed", f"cannot read the input file: {exc.strerror}"), sidecar, model, own_gen=lease.gen)
    if not shard:
        count = shard_count(sidecar.shards, validation.lines, cfg.shard_min_lines)
        if count > 1:
            return _cut_into_shards(ctx, job, rec, validation, count)
    try:
        writer = ResultWriter(job, checkpoint)
    except ValueError as exc:
        reason = f"results do not match the checkpoint, they cannot be trusted: {exc}"
        return end_job(ctx, job, rec, JobEnd("failed", reason), sidecar, model, checkpoint, validation, own_gen=lease.gen)
    if rec.in_progress_at is None:
        rec.in_progress_at = time.time()
    rec.status = "in_progress"
    if rec.open_attempt or counted:  # an attempt open on disk is closed until the first request goes in
        rec.open_attempt = False
        job.save_record(rec)
    # otherwise the record is written when the engine gets the job's first request (jobcommit.open_attempt),
    # with all of the above: two fsyncs fewer per job, which matters for thousands of one-line jobs
    return ActiveJob(ctx, job, lease, rec, sidecar, profile, validation, checkpoint, writer)


def _cut_into_shards(ctx: JobContext, job: JobDir, rec: JobRecord, validation: ValidationSummary, count: int) -> ActiveJob | str | None:
    """Cut the job once (the plan is one atomic write), then start its first shard here.

    The other shards are claimed by whichever daemon on the spool has room first (this one included)."""
    if not job.validation.exists():
        atomic_write_json(job.validation, validation.model_dump())  # every shard's daemon reads it
    plan = ShardPlan(spans=cut_spans(job.input, count))
    save_plan(job, plan)
    rec.status, rec.open_attempt = "in_progress", False
    if rec.in_progress_at is None:
        rec.in_progress_at = time.time()
    job.save_record(rec)
    log.info("cut into %d shards of about %d lines each", plan.count, validation.lines // plan.count, extra={"job": job.name})
    first = shard_dirs(job, plan)[0]
    lease = leases.acquire(first, ctx.node, None)
    if lease is None:
        return None  # another daemon took it first (it found the plan on its processing/ scan)
    return start_job(ctx, first, lease)


def _merge_finisher(ctx: JobContext):
    def finish(job: JobDir, record: JobRecord, end: JobEnd, total: Checkpoint, states) -> str:
        sidecar = _sidecar_or_default(job, ctx)
        validation = ValidationSummary.model_validate(read_json(job.validation)) if job.validation.exists() else None
        finish_job(
            ctx.spool_root, job, record, end, node=ctx.node, model=sidecar.model or ctx.config.engine.default_model,
            metadata=sidecar.metadata, handlers=sidecar.handlers, checkpoint=total, validation=validation,
            chunk_size=sidecar.chunk_size or ctx.config.chunk_size, hooks=ctx.finish_hooks,
            shards=[s.public(len(states)) for s in states],
        )  # fmt: skip
        return end.status

    return finish


def _size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _progress_mark(job: JobDir, checkpoint: Checkpoint, validated: bool | None = None) -> int:
    """Grows whenever a run commits something durable: a checkpoint, or the validating pass."""
    if validated is None:
        validated = job.validation.exists()
    return checkpoint.chunks * 2 + (1 if validated else 0)


def _count_unclean_end(ctx: JobContext, job: JobDir, rec: JobRecord, checkpoint: Checkpoint) -> None:
    """A run that died counts against the job only if it committed nothing: then the job may be the cause.

    A run whose daemon still lives did not die: its lease was taken over (it stalled past
    lease_seconds); it stops at its next renewal, and that never counts against the job.
    """
    alive = nodelock.live_run(ctx.spool_root, rec.attempt_node, rec.attempt_run, ctx.config.lease_seconds)
    if alive is not None:
        log.info(
            "the previous run's daemon (node %s, %s) is alive: its lease was taken over, not a crash; not counted",
            alive.node,
            alive.describe(),
            extra={"job": job.name},
        )
        return
    if _progress_mark(job, checkpoint) > rec.attempt_mark:
        log.info("the previous run ended without a clean stop after making progress; resuming without counting it", extra={"job": job.name})
        return
    rec.failures += 1
    rec.last_error = "runs of this job ended without a clean stop (crash, kill or power loss) before committing any progress"
    log.warning("the previous run ended without a clean stop before any progress (attempt %d)", rec.failures, extra={"job": job.name})


def give_up_run(job: JobDir, rec: JobRecord, failure: str | None, cfg: Config) -> JobEnd | None:
    """End this run of the job without finishing it.

    failure None: a stop or disk trouble, not the job's fault, never counted.
    Otherwise the attempt counts; returns the JobEnd when attempts are used up.
    """
    rec.open_attempt = False
    if failure is not None:
        rec.failures += 1
        rec.last_error = failure
        log.error("%s (attempt %d of %d)", failure, rec.failures, cfg.engine.max_attempts, extra={"job": job.name})
        if rec.failures >= cfg.engine.max_attempts:
            return JobEnd("failed", f"{failure} (after {rec.failures} attempts)")
        rec.retry_after = time.time() + min(300.0, 5.0 * 2 ** (rec.failures - 1))
    try:
        job.save_record(rec)
    except OSError as exc:
        log.warning("could not record the end of this run (%s); it may count as a failed attempt", exc.strerror, extra={"job": job.name})
    return None


def end_job(
    ctx: JobContext, job: JobDir, rec: JobRecord, end: JobEnd, sidecar: Sidecar, model: str | None,
    checkpoint: Checkpoint | None = None, validation: ValidationSummary | None = None, own_gen: int | None = None,
) -> str | None:  # fmt: skip
    """Merge the committed segments, write the final batch.json, plan handler runs, one rename. Returns the status.

    `own_gen`: the lease generation the caller holds (its own segment may be renamed into place).
    A shard records its outcome instead, and the job ends when its shards are merged (shardend.py):
    then the return is the job's status if this call merged it, else None.
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(job.state, job.initial_checkpoint() if isinstance(job, ShardDir) else None)
    if isinstance(job, ShardDir):
        return _end_shard(ctx, job, rec, end, checkpoint, own_gen)
    if validation is None and job.validation.exists():
        validation = ValidationSummary.model_validate(read_json(job.validation))
    elif validation is None and job.input.is_file() and _size(job.input) < LONG_PASS_BYTES:
        try:  # a small input's summary is not kept on disk: count it again
            validation = validate_file(job.input, model or "", max_line_bytes=ctx.config.max_line_bytes)
        except OSError:
            validation = None
    if own_gen is not None and not _hold_for_finish(ctx, job, own_gen):
        return None
    try:
        merge(
            job.path, [(job.state, checkpoint)], own=(job.state, own_gen) if own_gen is not None else None, sync=False
        )  # finish_job syncs
    except ValueError as exc:  # a results file cut shorter than the checkpoint says (by hand?)
        log.error("%s; finishing the job with the files as they are", exc, extra={"job": job.name})
    finish_job(
        ctx.spool_root, job, rec, end, node=ctx.node, model=model, metadata=sidecar.metadata,
        handlers=sidecar.handlers, checkpoint=checkpoint, validation=validation,
        chunk_size=sidecar.chunk_size or ctx.config.chunk_size, hooks=ctx.finish_hooks,
    )  # fmt: skip
    return end.status


def _hold_for_finish(ctx: JobContext, job: JobDir, gen: int) -> bool:
    """Fence the end: take the job's next lease generation. A daemon frozen past its lease that wakes
    here finds the generation taken by the daemon that took the job over, and stops without a write."""
    mine = leases.Lease(node=ctx.node, pid=os.getpid(), renewed_at=time.time(), gen=gen)
    if leases.acquire(job, ctx.node, mine, durable=False) is None:
        log.error("job %s was taken over by another daemon; leaving it to its new owner", job.name, extra={"job": job.name})
        return False
    return True


def _end_shard(ctx: JobContext, shard: ShardDir, rec: JobRecord, end: JobEnd, checkpoint: Checkpoint, own_gen: int | None) -> str | None:
    if own_gen is not None:
        checkpoint = checkpoint.carried_to(own_gen)
    job = JobDir(shard.path)
    seen = leases.current(job)  # before our outcome: while this shard is unfinished and ours, nobody can take the merge
    record_outcome(shard, checkpoint, end.status, end.reason)
    rec.status, rec.finished_at, rec.open_attempt = end.status, time.time(), False
    rec.failure_reason = end.reason if end.status == "failed" else None
    shard.save_record(rec)
    log.info("shard %d of %d %s", shard.span.index + 1, shard.count, end.status, extra={"job": shard.job_name})
    return try_merge(ctx, job, _merge_finisher(ctx), seen)


def _sidecar_or_default(job: JobDir, ctx: JobContext) -> Sidecar:
    try:
        return _load_sidecar(job, ctx)
    except SidecarError:
        return Sidecar()


def _load_sidecar(job: JobDir, ctx: JobContext) -> Sidecar:
    if not job.meta.exists():
        return Sidecar()
    try:
        text = read_regular(job.meta)
    except OSError as exc:
        raise SidecarError(f"cannot read the sidecar: {exc.strerror}") from None
    return parse_sidecar(text, ctx.handler_names)


def _validation(ctx: JobContext, job: JobDir, model: str, serves: frozenset[str] | None, validated: bool, size: int) -> ValidationSummary:
    if validated:
        return ValidationSummary.model_validate(read_json(job.validation))

    def keep_going(lines: int = 0) -> bool:
        return not ctx.hooks.should_stop()

    ahead = ctx.prevalidated(job.input, model, keep_going) if ctx.prevalidated else None
    aside = ctx.validate_aside(job.input, model, keep_going, serves) if not ahead and ctx.validate_aside else None
    summary = ahead or aside or validate_file(job.input, model, keep_going, ctx.config.max_line_bytes, serves)
    if ahead or size >= LONG_PASS_BYTES:  # a small input is validated again in milliseconds
        atomic_write_json(job.validation, summary.model_dump())
    how = " (validated ahead of time)" if ahead else ""
    log.info("validated: %d requests, %d invalid%s", summary.lines, summary.invalid, how, extra={"job": job.name})
    return summary


def _list_line_errors(
    ctx: JobContext, job: JobDir, model: str, validation: ValidationSummary, sidecar: Sidecar, serves: frozenset[str] | None, gen: int
) -> Checkpoint | None:
    """A job failing as a whole still lists each bad line in errors.jsonl. None if stopped part-way."""
    writer = ResultWriter(job, Checkpoint(gen=gen))
    duplicates = frozenset(validation.duplicates)
    chunk = sidecar.chunk_size or ctx.config.chunk_size
    failed = 0
    for raw in read_lines(job.input, max_line_bytes=ctx.config.max_line_bytes):
        parsed = judge(raw, model, duplicates, serves)
        if isinstance(parsed, LineError):
            writer.add(error_record(parsed.custom_id, parsed.line, parsed.code, parsed.message))
            failed += 1
        if raw.number % LIST_EVERY == 0:
            if writer.pending >= chunk:
                writer.flush()
            if ctx.hooks.should_stop():
                return None
    writer.flush()
    return Checkpoint(failed=failed, errors_bytes=writer.errors_bytes, gen=gen)
