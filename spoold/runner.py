"""Run one claimed job: validate, feed the engine a rolling window, checkpoint every chunk, finish.

The engine is never drained at a chunk boundary: a checkpoint commits the
records finished so far while the window stays full (see checkpoint.py for
how out-of-order completion is recorded).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Protocol

from spoold import lease as leases
from spoold.batch import FINAL_STATUSES, build_batch, chunk_count
from spoold.checkpoint import Checkpoint, Progress, load_checkpoint, save_checkpoint
from spoold.config import Config
from spoold.engine.base import Engine, EngineFailure, EngineRequest, EngineResult, ModelLoadError
from spoold.engine.manager import EngineManager
from spoold.errors import SidecarError, UnknownModel
from spoold.finish import FinishHooks, JobEnd, finish_job
from spoold.fsutil import atomic_write_json, read_json, truncate_to
from spoold.jobdir import JobDir, JobRecord
from spoold.lines import LineError, parse_line
from spoold.profiles import ModelProfile, resolve_model
from spoold.reader import RawLine, read_lines
from spoold.records import error_record, success_record
from spoold.sidecar import Sidecar, parse_sidecar
from spoold.validate import ValidationInterrupted, ValidationSummary, duplicate_error, fatal_reason, validate_file
from spoold.writer import ResultWriter

log = logging.getLogger(__name__)

FILL_BUDGET = 1000
"""Lines read per pass of the fill loop before the loop beats and checks for stop/cancel."""
UNREADABLE = (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT)


class Outcome(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # daemon stopping: checkpointed, resumes on the next start
    RETRY = "retry"  # engine failed; below max_attempts, run again later
    LOST = "lost"  # another daemon took the lease


class RunHooks(Protocol):
    def should_stop(self) -> bool: ...
    def beat(self, status: str) -> None: ...
    def chunk_committed(self, seconds: float, succeeded: int, failed: int, prompt_tokens: int, completion_tokens: int) -> None: ...


@dataclass
class RunContext:
    config: Config
    node: str
    spool_root: Path
    profiles: dict[str, ModelProfile]
    engines: EngineManager
    hooks: RunHooks
    finish_hooks: FinishHooks = field(default_factory=FinishHooks)
    handler_names: set[str] | None = None
    prevalidated: Callable[[Path, str, Callable[[], bool]], ValidationSummary | None] | None = None
    """A validating pass done ahead of time for this very input file, if any (see prevalidate.py)."""


@dataclass
class _Tally:
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JobRunner:
    def __init__(self, ctx: RunContext, job: JobDir, lease: leases.Lease, now: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self.job, self.lease, self._now = ctx, job, lease, now
        self.record: JobRecord = job.load_record()
        self.sidecar = Sidecar()
        self.model: str | None = None
        self.validation: ValidationSummary | None = None
        self.checkpoint: Checkpoint | None = None
        self._last_renew = now()
        self._last_cancel_check = now()
        self._rate: float | None = None
        self._serves: frozenset[str] | None = None
        """The line kinds the job's model answers (its profile's task)."""

    # ---- the whole job ---------------------------------------------------------------------

    def run(self, fail_reason: str | None = None) -> Outcome:
        rec, cfg = self.record, self.ctx.config
        if rec.status in FINAL_STATUSES:  # finished, but the crash came before the final rename
            try:
                self.sidecar = self._load_sidecar()
            except SidecarError:
                pass
            self.model = self.sidecar.model or cfg.engine.default_model
            return self._end(JobEnd(rec.status, rec.failure_reason))
        if rec.open_attempt:
            rec.failures += 1
            rec.last_error = "the previous run ended without a clean stop (crash, kill or power loss)"
        fail_reason = fail_reason or rec.pending_failure
        try:
            self.sidecar = self._load_sidecar()
            self.model = self.sidecar.model or cfg.engine.default_model
            profile = resolve_model(self.model, self.ctx.profiles)
        except (SidecarError, UnknownModel) as exc:
            return self._end(JobEnd("failed", str(exc)))
        self._serves = profile.serves
        if fail_reason:
            return self._end(JobEnd("failed", fail_reason))
        if self.job.cancel_requested():
            return self._end(JobEnd("cancelled"))
        if rec.failures >= cfg.engine.max_attempts:
            return self._end(JobEnd("failed", f"the engine failed on this job {rec.failures} times (last: {rec.last_error})"))
        rec.open_attempt = True
        self.job.save_record(rec)
        try:
            self.validation = self._validation()
            reason = fatal_reason(self.validation, self.sidecar.max_error_ratio)
            if reason and not self._write_line_errors_only():
                raise ValidationInterrupted()
        except ValidationInterrupted:
            self.abandon_attempt()
            return Outcome.STOPPED
        except OSError as exc:
            if exc.errno not in UNREADABLE:
                raise
            return self._end(JobEnd("failed", f"cannot read the input file: {exc.strerror}"))
        if reason:
            listed = [e.model_dump() for e in self.validation.errors]
            return self._end(JobEnd("failed", reason, listed))
        return self._infer(profile)

    def abandon_attempt(self) -> None:
        """This run ends without fault of the job (stop, disk full): it must not count as a failure."""
        self.record.open_attempt = False
        try:
            self.job.save_record(self.record)
        except OSError as exc:
            log.warning("could not record the end of this run (%s); it may count as a failed attempt", exc.strerror, extra={"job": self.job.name})

    def _infer(self, profile: ModelProfile) -> Outcome:
        rec = self.record
        self._beat(f"loading model {profile.name} for {self.job.name}")
        with leases.kept_during(self.job, self.lease, self.ctx.config.lease_seconds / 3) as fresh:
            try:
                engine: Engine | None = self.ctx.engines.get(profile)
            except ModelLoadError as exc:
                engine, load_error = None, str(exc)
        self.lease = fresh[0]
        if engine is None:
            return self._engine_failed(f"model {profile.name} failed to load: {load_error}")
        if rec.in_progress_at is None:
            rec.in_progress_at = time.time()
        rec.status = "in_progress"
        self.job.save_record(rec)
        started = self._now()
        try:
            outcome = self._process(engine)
        except JobCorrupt as exc:
            return self._end(JobEnd("failed", str(exc)))
        except EngineFailure as exc:
            self._commit()  # what finished before the failure is good: keep it
            self.ctx.engines.unload()
            if self.ctx.hooks.should_stop():  # Ctrl-C reaches vLLM's workers too: a stop, not a failure
                self.abandon_attempt()
                return Outcome.STOPPED
            return self._engine_failed(f"engine error: {exc}")
        finally:
            rec.run_seconds += self._now() - started
        if outcome is Outcome.STOPPED:
            self.abandon_attempt()
            line = self.checkpoint.next_line if self.checkpoint else 1
            log.info("stopped at line %d; it resumes from its checkpoint", line, extra={"job": self.job.name})
            return outcome
        if outcome is Outcome.LOST:
            return outcome
        return self._end(JobEnd(outcome.value))

    # ---- inference loop ---------------------------------------------------------------------

    def _process(self, engine: Engine) -> Outcome:
        cfg = self.ctx.config
        ckpt = self.checkpoint = load_checkpoint(self.job.checkpoint)
        try:
            self._renew_lease(force=True)  # never cut results files another daemon now owns
        except leases.LeaseLost as exc:
            log.error("%s; leaving it to its new owner", exc, extra={"job": self.job.name})
            return Outcome.LOST
        try:
            self._writer = ResultWriter(self.job, ckpt.output_bytes, ckpt.errors_bytes)
        except ValueError as exc:
            raise JobCorrupt(f"results do not match the checkpoint, they cannot be trusted: {exc}") from None
        self._progress = Progress(ckpt)
        self._tally = _Tally()
        self._chunk_started = self._now()
        chunk_size = self._chunk_size()
        window = cfg.engine.window
        lines = read_lines(self.job.input, ckpt.next_offset, ckpt.next_line)
        exhausted = False
        engine.abort_all()  # a previous job's leftovers must never leak into this one
        try:
            while True:
                stop = self._interrupted()
                if stop is not None:
                    engine.abort_all()
                    if stop is Outcome.LOST:
                        return stop
                    self._commit()
                    return stop
                budget = FILL_BUDGET  # bounded, so long runs of bad lines still reach the beat and stop checks
                while not exhausted and engine.in_flight() < window and budget > 0:
                    budget -= 1
                    raw = next(lines, None)
                    if raw is None:
                        exhausted = True
                        break
                    self._progress.read(raw.number, raw.end)
                    if self._progress.already_done(raw.number):
                        continue
                    parsed = self._parse(raw)
                    if parsed is None:
                        continue
                    if isinstance(parsed, LineError):
                        self._record_error(parsed)
                        continue
                    request = EngineRequest(parsed.line, parsed.custom_id, parsed.kind, {**self.sidecar.sampling, **parsed.body})
                    # Open before add: if add raises, the checkpoint must still name this line as not done.
                    self._progress.dispatched(raw.number, raw.offset)
                    rejected = engine.add(request)
                    if rejected is not None:
                        self._record_result(rejected)
                if engine.in_flight():
                    for result in engine.step():
                        self._record_result(result)
                elif exhausted:
                    break
                if self._writer.pending >= chunk_size:
                    self._commit()
                self._beat(self._status_line())
        finally:
            lines.close()
        self._commit()
        return Outcome.COMPLETED

    @cached_property
    def _duplicates(self) -> frozenset[int]:
        """Read once, after the validating pass has set `self.validation`."""
        return frozenset(self.validation.duplicates if self.validation else ())

    def _parse(self, raw: RawLine) -> EngineRequest | LineError | None:
        """One input line as the validating pass judged it (later duplicates of a custom_id are errors)."""
        parsed = parse_line(raw.data, raw.number, self.model or "", unterminated=raw.unterminated, serves=self._serves)
        if isinstance(parsed, EngineRequest) and raw.number in self._duplicates:
            return duplicate_error(raw.number, parsed.custom_id)
        return parsed

    def _record_error(self, error: LineError) -> None:
        self._writer.add(error_record(error.custom_id, error.line, error.code, error.message))
        self._tally.failed += 1
        self._done(error.line)

    def _record_result(self, result: EngineResult) -> None:
        if result.error is not None or result.body is None:
            code, message = (result.error.code, result.error.message) if result.error else ("engine_error", "no response")
            self._writer.add(error_record(result.custom_id, result.line, code, message))
            self._tally.failed += 1
        else:
            self._writer.add(success_record(result.custom_id, result.body))
            self._tally.succeeded += 1
            self._tally.prompt_tokens += result.prompt_tokens
            self._tally.completion_tokens += result.completion_tokens
        self._done(result.line)

    def _done(self, line: int) -> None:
        self._progress.finished(line)
        if self._writer.pending >= self._chunk_size():
            self._commit()

    def _commit(self) -> None:
        """Append + fsync the finished records, then commit the checkpoint that names their length."""
        self._renew_lease(force=True)
        if self._writer.pending == 0 and self.checkpoint and self._progress.low_water()[0] == self.checkpoint.next_line:
            return
        output_bytes, errors_bytes = self._writer.flush()
        self._renew_lease(force=True)  # a stall in the flush may have cost us the job: then commit nothing
        line, offset, done_above = self._progress.commit_view()
        old, tally = self.checkpoint or Checkpoint(), self._tally
        self.checkpoint = Checkpoint(
            next_line=line, next_offset=offset, done_above=done_above,
            output_bytes=output_bytes, errors_bytes=errors_bytes,
            succeeded=old.succeeded + tally.succeeded, failed=old.failed + tally.failed,
            prompt_tokens=old.prompt_tokens + tally.prompt_tokens,
            completion_tokens=old.completion_tokens + tally.completion_tokens,
            chunks=old.chunks + 1,
        )  # fmt: skip
        save_checkpoint(self.job.checkpoint, self.checkpoint)
        seconds = max(self._now() - self._chunk_started, 1e-9)
        self._rate = (tally.succeeded + tally.failed) / seconds
        self.ctx.hooks.chunk_committed(seconds, tally.succeeded, tally.failed, tally.prompt_tokens, tally.completion_tokens)
        self._tally = _Tally()
        self._chunk_started = self._now()
        self._write_live_batch("in_progress")

    # ---- helpers ------------------------------------------------------------------------------

    def _interrupted(self) -> Outcome | None:
        if self.ctx.hooks.should_stop():
            return Outcome.STOPPED
        now = self._now()
        if now - self._last_cancel_check >= 1.0:
            self._last_cancel_check = now
            if self.job.cancel_requested():
                log.info("cancelling as asked", extra={"job": self.job.name})
                return Outcome.CANCELLED
        try:
            self._renew_lease()
        except leases.LeaseLost as exc:
            log.error("%s; leaving it to its new owner", exc, extra={"job": self.job.name})
            return Outcome.LOST
        return None

    def _renew_lease(self, force: bool = False) -> None:
        now = self._now()
        if force or now - self._last_renew >= self.ctx.config.lease_seconds / 3:
            self.lease = leases.renew(self.job, self.lease)
            self._last_renew = now

    def _beat(self, status: str) -> None:
        self.ctx.hooks.beat(status)

    def _status_line(self) -> str:
        ckpt = self.checkpoint or Checkpoint()
        total = self.validation.lines if self.validation else 0
        chunks = chunk_count(total, self._chunk_size())
        rate = f", {self._rate:.1f} req/s" if self._rate else ""
        return f"{self.job.name}: chunk {min(ckpt.chunks + 1, max(chunks, 1))}/{chunks}, {ckpt.records}/{total} lines{rate}, model {self.model}"

    def _chunk_size(self) -> int:
        return self.sidecar.chunk_size or self.ctx.config.chunk_size

    def _load_sidecar(self) -> Sidecar:
        if not self.job.meta.exists():
            return Sidecar()
        try:
            text = self.job.meta.read_bytes()
        except OSError as exc:
            raise SidecarError(f"cannot read the sidecar: {exc.strerror}") from None
        return parse_sidecar(text, self.ctx.handler_names)

    def _validation(self) -> ValidationSummary:
        if self.job.validation.exists():
            return ValidationSummary.model_validate(read_json(self.job.validation))
        self._beat(f"validating {self.job.name}")
        self._write_live_batch("validating")
        def keep_going(lines: int) -> bool:
            self._beat(f"validating {self.job.name}: {lines} lines read")
            self._renew_lease()
            return not self.ctx.hooks.should_stop()

        ahead = self.ctx.prevalidated(self.job.input, self.model or "", lambda: keep_going(0)) if self.ctx.prevalidated else None
        summary = ahead or validate_file(self.job.input, self.model or "", keep_going, self._serves)
        atomic_write_json(self.job.validation, summary.model_dump())
        how = " (validated ahead of time)" if ahead else ""
        log.info("validated: %d requests, %d invalid%s", summary.lines, summary.invalid, how, extra={"job": self.job.name})
        return summary

    def _write_line_errors_only(self) -> bool:
        """A job failing as a whole still lists each bad line in errors.jsonl. False if stopped part-way."""
        writer = ResultWriter(self.job, 0, 0)
        failed = 0
        for raw in read_lines(self.job.input):
            parsed = self._parse(raw)
            if isinstance(parsed, LineError):
                writer.add(error_record(parsed.custom_id, parsed.line, parsed.code, parsed.message))
                failed += 1
            if raw.number % FILL_BUDGET == 0:
                if writer.pending >= self._chunk_size():
                    writer.flush()
                self._beat(f"{self.job.name}: listing bad lines, line {raw.number}")
                self._renew_lease()
                if self.ctx.hooks.should_stop():
                    return False
        writer.flush()
        self.checkpoint = Checkpoint(failed=failed, errors_bytes=writer.errors_bytes)
        return True

    def _write_live_batch(self, status: str) -> None:
        batch = build_batch(
            self.record, status, node=self.ctx.node, model=self.model, metadata=self.sidecar.metadata,
            checkpoint=self.checkpoint, validation=self.validation, chunk_size=self._chunk_size(), rate=self._rate,
        )  # fmt: skip
        atomic_write_json(self.job.batch, batch)

    def _engine_failed(self, message: str) -> Outcome:
        rec = self.record
        rec.failures += 1
        rec.last_error = message
        rec.open_attempt = False
        log.error("%s (attempt %d of %d)", message, rec.failures, self.ctx.config.engine.max_attempts, extra={"job": self.job.name})
        if rec.failures >= self.ctx.config.engine.max_attempts:
            return self._end(JobEnd("failed", f"{message} (after {rec.failures} attempts)"))
        rec.retry_after = time.time() + min(300.0, 5.0 * 2 ** (rec.failures - 1))
        self.job.save_record(rec)
        return Outcome.RETRY

    def _load_state(self) -> None:
        if self.checkpoint is None and self.job.checkpoint.exists():
            self.checkpoint = load_checkpoint(self.job.checkpoint)
        if self.validation is None and self.job.validation.exists():
            self.validation = ValidationSummary.model_validate(read_json(self.job.validation))

    def _end(self, end: JobEnd) -> Outcome:
        self._load_state()
        ckpt = self.checkpoint or Checkpoint()
        for path, good in ((self.job.output, ckpt.output_bytes), (self.job.errors, ckpt.errors_bytes)):
            try:
                truncate_to(path, good)  # records appended after the last checkpoint were never committed
            except ValueError as exc:
                log.error("%s; finishing the job with the file as it is", exc, extra={"job": self.job.name})
        finish_job(
            self.ctx.spool_root, self.job, self.record, end, node=self.ctx.node, model=self.model,
            metadata=self.sidecar.metadata, handlers=self.sidecar.handlers, checkpoint=self.checkpoint,
            validation=self.validation, chunk_size=self._chunk_size(), hooks=self.ctx.finish_hooks,
        )  # fmt: skip
        return Outcome(end.status)


class JobCorrupt(Exception):
    """The job's own files are inconsistent (results shorter than the checkpoint says): no retry helps."""
