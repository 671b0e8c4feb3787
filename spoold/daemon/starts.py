"""Starting jobs on the job-start threads: claim (or take over a processing/ job or shard), then `job.start.start_job`
(validating pass, results opened); the loop reaps finished starts into `waiting` and finished ends into the metrics."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

from spoold.daemon.base import Choice
from spoold.daemon.feed import Feeding
from spoold.engine.faults import one_line
from spoold.job.active import ActiveJob
from spoold.job.shards.plan import ShardDir, load_plan
from spoold.job.sidecar import Sidecar
from spoold.job.start import end_job, give_up_run, start_job
from spoold.spool import claim as claims
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir
from spoold.spool.names import SIDECAR_SUFFIX
from spoold.spool.readiness import Verdict

log = logging.getLogger("spoold.daemon")


class Starts(Feeding):
    def _start(self, choice: Choice, ticket: int | None = None) -> ActiveJob | str | None:
        """On a job-start thread: claim (or take over), then start_job."""
        name = choice.candidate.name
        fail_reason = None
        if choice.verdict is None:
            job = choice.job
            try:
                lease = leases.acquire(job, self.node, choice.lease) if job is not None else None
            except FileNotFoundError:
                if job is None or job.path.exists():
                    raise
                lease = None  # it left processing/ since the scan that found it (merged and finished): not disk trouble
            if job is None or lease is None:
                return None  # another daemon took it over first
            if isinstance(job, ShardDir) and choice.lease is None:
                log.info("taking shard %d of %d", job.span.index + 1, job.count, extra={"job": job.job_name})
            elif not isinstance(job, ShardDir) and load_plan(job) is not None:
                log.info("its shards are all finished: merging them", extra={"job": job.name})
            else:
                log.info("resuming from its checkpoint", extra={"job": job.name})
        else:
            assert ticket is not None
            claimed = claims.claim_with_lease(self.spool, name, self.node, self.turnstile.turn(ticket))
            if claimed is None:
                return None  # another daemon won the claim
            job, lease = claimed
            if choice.verdict is Verdict.NO_SIDECAR:
                fail_reason = (
                    f"no sidecar {name}{SIDECAR_SUFFIX} arrived within {self.config.watch.orphan_seconds:g} s (watch.require_sidecar is on)"
                )
                record = job.load_record()
                record.pending_failure = record.pending_failure or fail_reason  # a crash before it is finished must not run it
                job.save_record(record)
        assert lease is not None
        try:
            return start_job(self._ctx, job, lease, fail_reason)
        except OSError:  # disk full, NFS trouble: not the job's fault, never counted
            record = job.load_record()
            give_up_run(job, record, None, self.config)
            raise
        except Exception as exc:  # a bug, not a user mistake: count the attempt, keep the daemon up
            return self._unexpected(job, exc)

    def _unexpected(self, job: JobDir, exc: Exception) -> str | None:
        """An unexpected error on one job counts as a failed attempt; the traceback is logged once, at debug."""
        message = f"unexpected error: {one_line(exc)}"
        try:
            record = job.load_record()
            if record.last_error != message:  # once per job and distinct error, not on every retry
                log.debug("%s", message, exc_info=exc, extra={"job": job.name})
            end = give_up_run(job, record, message, self.config)
            if end is not None:
                return end_job(self._ctx, job, record, end, Sidecar(), None)
        except Exception as again:  # noqa: BLE001 - the job stays in processing/ and is retried later
            log.error("cannot record the error (%s); the job will be retried", one_line(again), extra={"job": job.name})
        self._not_before[job.name] = time.time() + 30
        return None

    def _reap(self) -> None:
        """Collect finished starts (to waiting jobs) and finished ends (to metrics)."""
        for name, (future, _, started) in list(self.starting.items()):
            if not future.done():
                continue
            del self.starting[name]
            self._supply.pop(name, None)
            result = self._result(future, name)
            if isinstance(result, ActiveJob):
                self.keeper.add(result)
                self.waiting.append(result)
            elif isinstance(result, str):
                self.service.job_done(result, time.monotonic() - started)
        for closing in [c for c in self.closing if c.future.done()]:
            self.closing.remove(closing)
            status = self._result(closing.future, closing.name)
            if isinstance(status, str):
                self.service.job_done(status, time.monotonic() - closing.started)
                self._last_trouble = None

    def _result(self, future: Future, name: str) -> object:
        try:
            return future.result()
        except OSError as exc:  # disk full, NFS trouble: the job stays resumable; back off and say so
            self._disk_trouble(exc, name)
        except Exception as exc:  # noqa: BLE001 - a bug in a job task must not stop the daemon
            log.error("unexpected error: %s; the job will be retried", one_line(exc), extra={"job": name})
            log.debug("traceback", exc_info=exc, extra={"job": name})
            self._not_before[name] = time.time() + 30
        return None
