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
        if not self.active and not any(j.model == loaded for j in self.waiting):
            first = max(self.waiting, key=lambda j: j.priority)
            if self.config.engine.backend == "vllm":  # beside a model load, the ahead-of-time pass's worker starts unnoticed
                self.prevalidator.warm()
            try:
                engine = self.engines.get(first.profile)
            except ModelLoadError as exc:
                for job in [j for j in self.waiting if j.model == first.model]:
                    self._close(job, "retry", f"model {first.model} failed to load: {exc}")
                    self.waiting.remove(job)
                return
            self.loop = EngineLoop(engine)
            loaded = engine.model
        if self.loop is None or self.loop.engine.model != loaded:
            return
        free = self.config.engine.max_active_jobs - len(self.active)
        ready = [j for j in self.waiting if j.model == loaded]
        for job in sorted(ready, key=lambda j: -j.priority)[:free]:  # stable: earlier started first
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
            self._engine_failed(f"engine error: {exc}")
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
            if job.drained:
                self.active.remove(job)
                self._close(job, "completed")
        # with every job waiting for its commits and nothing in flight, sleep until a commit lands
        return loop.in_flight() > 0 or any(not j.backlogged() for j in self.active)

    def _engine_failed(self, message: str) -> None:
        """The engine as a whole failed: what finished is kept, each active job's attempt counts
        (it cannot be pinned on one job), and the engine is loaded afresh for the next run."""
        stopping = self.stop_requested
        for job in list(self.active):
            self.active.remove(job)
            job.dropped(job.in_engine)
            self._close(job, "stopped" if stopping else "retry", message)
        self.loop = None
        self.engines.unload()

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
