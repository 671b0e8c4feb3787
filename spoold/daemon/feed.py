"""Feeding the engine: started jobs of the loaded model move to it (a model switch only once it drained), the engine loop is
filled and stepped, full chunks go to commit on the jobs' io lanes, drained jobs close; an engine failure ends its jobs' runs."""

from __future__ import annotations

import logging
import time

from spoold.daemon.base import Closing
from spoold.daemon.candidates import Candidates
from spoold.engine.base import EngineFailure, ModelLoadError
from spoold.engine.faults import one_line
from spoold.engine.loop import EngineLoop
from spoold.job.active import ActiveJob
from spoold.job.commit import close, commit, open_attempt

log = logging.getLogger("spoold.daemon")


class Feeding(Candidates):
    def _load_for_waiting(self) -> None:
        """Move started jobs of the loaded model to the engine; switch models only once the engine drained."""
        if not self.waiting:
            return
        loaded = self.engines.loaded_model
        if not self.active and not any(j.engine_model == loaded for j in self.waiting):  # adapters run on their base's engine
            first = max(self.waiting, key=lambda j: j.priority)
            if self.config.engine.backend == "vllm":  # beside a model load, the ahead-of-time pass's worker starts unnoticed
                self.prevalidator.warm()
            try:
                with self.pulse.holding():  # a model load takes minutes: the leases are kept meanwhile
                    engine = self.engines.get(first.profile)
            except ModelLoadError as exc:
                if self._engine_died:
                    self._reload_failed(first.engine_model, exc)
                    return
                for job in [j for j in self.waiting if j.engine_model == first.engine_model]:
                    self._close(job, "retry", f"model {first.engine_model} failed to load: {exc}")
                    self.waiting.remove(job)
                return
            self.loop = EngineLoop(engine)
            self._engine_died = False
            loaded = engine.model
        if self.loop is None or self.loop.engine.model != loaded:
            return
        limit = self.config.engine.max_active_jobs
        ready = [j for j in self.waiting if j.engine_model == loaded]
        for job in sorted(ready, key=lambda j: -j.priority):  # stable: earlier started first
            if len(self.active) >= limit or any(a.record.isolated_until for a in self.active):
                break  # full, or an isolated job runs alone
            if job.record.isolated_until and self.active:
                break  # it runs alone once the engine drained (the jobs behind it wait too, so it is not starved)
            self.waiting.remove(job)
            job.started = time.monotonic()  # its running time counts from here, not from a model load it waited for
            self.active.append(job)

    def _feed(self) -> bool:
        loop = self.loop
        if loop is None or not self.active:
            return False
        order = sorted(self.active, key=lambda j: -j.priority)  # stable: earlier admitted first
        try:
            loop.fill(order, self.config.engine.window)
            for job in order:
                if job.attempt_to_open():
                    self.io.submit(job.name, open_attempt, job)
            loop.step()
        except EngineFailure as exc:
            self._engine_failed(f"engine error: {exc}", crashed=True)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug in the engine path: like an engine failure, never a crash loop
            message = f"unexpected error: {one_line(exc)}"
            if message not in self._tracebacks_told:  # the traceback once, not on every retry
                self._tracebacks_told.add(message)
                log.debug("%s", message, exc_info=exc)
            self._engine_failed(message)
            return False
        self.engines.touch()
        for job in list(self.active):
            for cut in job.full_cuts():
                future = self.io.submit(job.name, commit, job, cut)
                future.add_done_callback(lambda _: self.wake.set())
                job.commits.append(future)
            if job.record.isolated_until and job.checkpoint.next_line >= job.record.isolated_until:
                log.info("ran alone past the lines in flight when the engine died: not the culprit, sharing again", extra={"job": job.name})
                job.record.isolated_until = 0  # on disk with the record's next save; until then a restart isolates it again
            if job.drained:
                self.active.remove(job)
                self._close(job, "completed")
        # with every job waiting for its commits and nothing in flight, sleep until a commit lands
        return loop.in_flight() > 0 or any(not j.backlogged() for j in self.active)

    def _engine_failed(self, message: str, crashed: bool = False) -> None:
        """The engine as a whole failed (died, hung, or a bug on its path): one ERROR line, then the crash rules
        (docs/decisions.md, "When the engine dies"). What finished is kept; the engine is unloaded and loaded afresh when
        the jobs resume from their checkpoints (at once). Only a job alone in the engine is charged the attempt;
        jobs that shared it run isolated (alone) past the lines they had in flight, which finds the culprit."""
        stopping = self.stop_requested
        in_flight = [j for j in self.active if j.in_engine > 0]
        model = self.engines.loaded_model or (self.loop.engine.model if self.loop else "?")
        then = "stopping" if stopping else "reloading it; the jobs resume from their checkpoints"
        told = log.error if crashed else log.info  # a bug on spoold's side is told by each job's own error line
        told("engine of model %s failed: %s; jobs in flight: %s; %s", model, message, ", ".join(j.name for j in in_flight) or "none", then)
        for job in list(self.active):
            self.active.remove(job)
            job.dropped(job.in_engine)
            if stopping or job not in in_flight:
                self._close(job, "stopped")  # its requests were not in the engine: not its doing
            elif len(in_flight) == 1:  # alone in the engine: charged, and it keeps running alone
                job.record.isolated_until = max(job.record.isolated_until, job.progress.read_line)
                self._close(job, "retry", f"it crashed the engine each time it ran alone in it ({message})" if crashed else message)
            else:
                job.record.isolated_until = max(job.record.isolated_until, job.progress.read_line)
                log.info("shared the engine when it failed: runs alone up to line %d", job.record.isolated_until, extra={"job": job.name})
                self._close(job, "stopped")
        self.loop = None
        self._engine_died = not stopping
        self.engines.unload()
        self._next_processing_scan = 0.0  # resume them at once

    def _reload_failed(self, model: str, exc: Exception) -> None:
        """The engine died and cannot be loaded again (a GPU in a bad state?): exit non-zero so the service manager
        restarts spoold (or an operator sees it); the jobs stay resumable and are not charged."""
        log.error("model %s cannot be loaded again after its engine failed (%s); exiting so that spoold is restarted", model, exc)
        for job in list(self.waiting):
            self.waiting.remove(job)
            self._close(job, "stopped")
        self.exit_code = 1
        self.stop_requested = True

    def _leave(self, job: ActiveJob) -> None:
        """The job leaves the engine and the keeper: its requests are aborted, its reader closed."""
        if self.loop is not None and job.in_engine:
            self.loop.drop(job)
        job.close_reader()
        self.keeper.remove(job)

    def _close(self, job: ActiveJob, how: str, reason: str | None = None) -> None:
        """Hand the job's last cut and its end to the job I/O thread; it leaves the engine now."""
        self._leave(job)
        for cut in job.full_cuts():
            self.io.submit(job.name, commit, job, cut)
        future = self.io.submit(job.name, close, job, job.cut(), how, reason)
        future.add_done_callback(lambda _: self.wake.set())
        self.closing.append(Closing(job.name, future, time.monotonic() - (time.time() - job.record.claimed_at)))

    def _act_on_flags(self) -> None:
        """Lost leases, cancels and task errors, noticed by other threads."""
        for group in (self.active, self.waiting):
            for job in list(group):
                if job.trouble is not None:
                    group.remove(job)
                    self._close(job, "stopped")  # close() reports the trouble
                elif job.lost:  # its new owner has it: nothing more is written
                    group.remove(job)
                    self._leave(job)
                elif job.cancel:
                    group.remove(job)
                    self._close(job, "cancelled")
