"""From a claimed job to an active one: attempts, sidecar, model, the validating pass. Runs off the main thread.

`start_job` either returns an `ActiveJob` ready to be fed to the engine of its
model, or ends the job itself (failed, cancelled, finished before a crash)
and returns its final status, or None when the job stays in processing/
(stopped, or waiting for a retry).
"""

from __future__ import annotations

import errno
import logging
import time

from spoold import lease as leases
from spoold import nodelock
from spoold.active import ActiveJob, JobContext
from spoold.checkpoint import Checkpoint, load_checkpoint
from spoold.config import Config
from spoold.errors import SidecarError, UnknownModel
from spoold.finish import JobEnd, finish_job
from spoold.fsutil import atomic_write_json, read_json, truncate_to
from spoold.inputcheck import read_regular
from spoold.jobdir import JobDir, JobRecord
from spoold.lines import LineError
from spoold.profiles import resolve_model
from spoold.reader import read_lines
from spoold.records import error_record
from spoold.sidecar import Sidecar, parse_sidecar
from spoold.validate import ValidationInterrupted, ValidationSummary, fatal_reason, judge, validate_file
from spoold.writer import ResultWriter

log = logging.getLogger(__name__)

UNREADABLE = (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT)
LONG_PASS_BYTES = 1 << 20
"""Inputs this large open their attempt on disk before the validating pass and keep its summary
(validation.json); smaller ones validate again in milliseconds when needed: two durable writes fewer
per job, which matters for thousands of one-line jobs."""
LIST_EVERY = 1000


class JobCorrupt(Exception):
    """The job's own files are inconsistent (results shorter than the checkpoint says): no retry helps."""


def start_job(ctx: JobContext, job: JobDir, lease: leases.Lease, fail_reason: str | None = None) -> ActiveJob | str | None:
    cfg = ctx.config
    rec = job.load_record()
    sidecar = Sidecar()
    if rec.status in ("completed", "failed", "cancelled"):  # finished, but the crash came before the final rename
        sidecar = _sidecar_or_default(job, ctx)
        return end_job(ctx, job, rec, JobEnd(rec.status, rec.failure_reason), sidecar, sidecar.model or cfg.engine.default_model)
    checkpoint = load_checkpoint(job.checkpoint)
    if rec.open_attempt:
        _count_unclean_end(ctx, job, rec, checkpoint)
    fail_reason = rec.pending_failure or fail_reason  # e.g. an unsafe input found at claim time
    try:
        sidecar = _load_sidecar(job, ctx)
        model = sidecar.model or cfg.engine.default_model
        profile = resolve_model(model, ctx.profiles)
    except (SidecarError, UnknownModel) as exc:
        return end_job(ctx, job, rec, JobEnd("failed", str(exc)), sidecar, sidecar.model or cfg.engine.default_model)
    if fail_reason:
        return end_job(ctx, job, rec, JobEnd("failed", fail_reason), sidecar, model)
    if job.cancel_requested():
        return end_job(ctx, job, rec, JobEnd("cancelled"), sidecar, model, checkpoint)
    if rec.failures >= cfg.engine.max_attempts:
        return end_job(ctx, job, rec, JobEnd("failed", f"{rec.last_error} ({rec.failures} times; engine.max_attempts is {cfg.engine.max_attempts})"), sidecar, model, checkpoint)
    rec.attempt_mark = _progress_mark(job, checkpoint)
    rec.attempt_node, rec.attempt_run = ctx.node, ctx.run_id  # who opens it: a run still alive never counts
    if not job.validation.exists() and _size(job.input) >= LONG_PASS_BYTES:
        rec.open_attempt = True  # a crash during a long validating pass may be this input's doing
        job.save_record(rec)
    try:
        validation = _validation(ctx, job, model, profile.serves)
        reason = fatal_reason(validation, sidecar.max_error_ratio)
        if reason:
            listing = _list_line_errors(ctx, job, model, validation, sidecar, profile.serves)
            if listing is None:
                raise ValidationInterrupted()
            return end_job(ctx, job, rec, JobEnd("failed", reason, [e.model_dump() for e in validation.errors]), sidecar, model, listing, validation)
    except ValidationInterrupted:
        give_up_run(job, rec, None, cfg)
        return None
    except OSError as exc:
        if exc.errno not in UNREADABLE:
            raise
        return end_job(ctx, job, rec, JobEnd("failed", f"cannot read the input file: {exc.strerror}"), sidecar, model)
    try:
        writer = ResultWriter(job, checkpoint.output_bytes, checkpoint.errors_bytes)
    except ValueError as exc:
        reason = f"results do not match the checkpoint, they cannot be trusted: {exc}"
        return end_job(ctx, job, rec, JobEnd("failed", reason), sidecar, model, checkpoint, validation)
    if rec.in_progress_at is None:
        rec.in_progress_at = time.time()
    rec.status = "in_progress"
    rec.open_attempt = False  # opened again when the engine gets its first request (jobcommit.open_attempt)
    job.save_record(rec)
    return ActiveJob(ctx, job, lease, rec, sidecar, profile, validation, checkpoint, writer)


def _size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _progress_mark(job: JobDir, checkpoint: Checkpoint) -> int:
    """Grows whenever a run commits something durable: a checkpoint, or the validating pass."""
    return checkpoint.chunks * 2 + (1 if job.validation.exists() else 0)


def _count_unclean_end(ctx: JobContext, job: JobDir, rec: JobRecord, checkpoint: Checkpoint) -> None:
    """A run that died counts against the job only if it committed nothing: then the job may be the cause.

    A run whose daemon still lives did not die: its lease was taken over (it stalled past
    lease_seconds); it stops at its next renewal, and that never counts against the job.
    """
    alive = nodelock.live_run(ctx.spool_root, rec.attempt_node, rec.attempt_run, ctx.config.lease_seconds)
    if alive is not None:
        log.info("the previous run's daemon (node %s, %s) is alive: its lease was taken over, not a crash; not counted", alive.node, alive.describe(), extra={"job": job.name})
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
    checkpoint: Checkpoint | None = None, validation: ValidationSummary | None = None,
) -> str:  # fmt: skip
    """Cut uncommitted tails, write the final batch.json, plan handler runs, one rename. Returns the status."""
    if checkpoint is None and job.checkpoint.exists():
        checkpoint = load_checkpoint(job.checkpoint)
    if validation is None and job.validation.exists():
        validation = ValidationSummary.model_validate(read_json(job.validation))
    elif validation is None and job.input.is_file() and _size(job.input) < LONG_PASS_BYTES:
        try:  # a small input's summary is not kept on disk: count it again
            validation = validate_file(job.input, model or "", max_line_bytes=ctx.config.max_line_bytes)
        except OSError:
            validation = None
    ckpt = checkpoint or Checkpoint()
    for path, good in ((job.output, ckpt.output_bytes), (job.errors, ckpt.errors_bytes)):
        try:
            truncate_to(path, good)  # records appended after the last checkpoint were never committed
        except ValueError as exc:
            log.error("%s; finishing the job with the file as it is", exc, extra={"job": job.name})
    finish_job(
        ctx.spool_root, job, rec, end, node=ctx.node, model=model, metadata=sidecar.metadata,
        handlers=sidecar.handlers, checkpoint=checkpoint, validation=validation,
        chunk_size=sidecar.chunk_size or ctx.config.chunk_size, hooks=ctx.finish_hooks,
    )  # fmt: skip
    return end.status


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


def _validation(ctx: JobContext, job: JobDir, model: str, serves: frozenset[str] | None) -> ValidationSummary:
    if job.validation.exists():
        return ValidationSummary.model_validate(read_json(job.validation))

    def keep_going(lines: int = 0) -> bool:
        return not ctx.hooks.should_stop()

    ahead = ctx.prevalidated(job.input, model, keep_going) if ctx.prevalidated else None
    summary = ahead or validate_file(job.input, model, keep_going, ctx.config.max_line_bytes, serves)
    if ahead or _size(job.input) >= LONG_PASS_BYTES:  # a small input is validated again in milliseconds
        atomic_write_json(job.validation, summary.model_dump())
    how = " (validated ahead of time)" if ahead else ""
    log.info("validated: %d requests, %d invalid%s", summary.lines, summary.invalid, how, extra={"job": job.name})
    return summary


def _list_line_errors(
    ctx: JobContext, job: JobDir, model: str, validation: ValidationSummary, sidecar: Sidecar, serves: frozenset[str] | None
) -> Checkpoint | None:
    """A job failing as a whole still lists each bad line in errors.jsonl. None if stopped part-way."""
    writer = ResultWriter(job, 0, 0)
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
    return Checkpoint(failed=failed, errors_bytes=writer.errors_bytes)
