"""The daemon's engine loop without its threads: jobs started, fed, cut, committed and closed in one
thread, so a test can crash it (a BaseException stands in for kill -9) at an exact step."""

from __future__ import annotations

import random

from spoold.config import Config
from spoold.daemon.keeper import LeaseKeeper
from spoold.engine.base import Engine, EngineFailure, EngineRequest, EngineResult
from spoold.engine.echo import EchoEngine
from spoold.engine.loop import EngineLoop
from spoold.engine.profiles import load_profiles
from spoold.job.active import ActiveJob, JobContext
from spoold.job.commit import close, commit, open_attempt
from spoold.job.start import start_job
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool


class Hooks:
    """The jobs' view of the service, for tests: a stop flag, nothing else."""

    def __init__(self) -> None:
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop

    def beat(self, status: str) -> None:
        pass

    def chunk_committed(self, *args: object, **kwargs: object) -> None:
        pass


def run_inline(ctx: JobContext, engine: Engine, job: JobDir, lease: leases.Lease | None, fail_reason: str | None = None) -> str:
    """Run one job to its end; see run_many."""
    return run_many(ctx, engine, [(job, lease)], fail_reason)[job.name]


def run_many(
    ctx: JobContext, engine: Engine, jobs: list[tuple[JobDir, leases.Lease | None]], fail_reason: str | None = None
) -> dict[str, str]:
    """Run jobs side by side on one engine. Outcome per job name: completed, failed, cancelled
    (in done/ or failed/), or stopped, retry, lost (still in processing/)."""
    outcomes: dict[str, str] = {}
    active: list[ActiveJob] = []
    keeper = LeaseKeeper()
    for job, lease in jobs:
        assert lease is not None
        started = start_job(ctx, job, lease, fail_reason)
        if isinstance(started, ActiveJob):
            active.append(started)
            keeper.add(started)
        else:
            outcomes[job.name] = started or ("stopped" if ctx.hooks.should_stop() else "retry")
    loop = EngineLoop(engine)
    engine.abort_all()

    def end(a: ActiveJob, how: str, reason: str | None = None) -> None:
        if a.in_engine:
            loop.drop(a)
        for cut in a.full_cuts():
            commit(a, cut)
        status = close(a, a.cut(), how, reason)
        outcomes[a.name] = "lost" if a.lost else (status or how)
        active.remove(a)

    while active:
        keeper.check()
        for a in list(active):
            if a.lost:
                loop.drop(a)
                outcomes[a.name] = "lost"
                active.remove(a)
            elif ctx.hooks.should_stop():
                end(a, "stopped")
            elif a.cancel:
                end(a, "cancelled")
        try:
            loop.fill(active, ctx.config.engine.window)
            for a in active:
                if a.attempt_to_open():
                    open_attempt(a)
            loop.step()
        except EngineFailure as exc:
            for a in list(active):
                end(a, "retry", f"engine error: {exc}")
            break
        for a in list(active):
            for cut in a.full_cuts():
                commit(a, cut)
            if a.lost:
                loop.drop(a)
                outcomes[a.name] = "lost"
                active.remove(a)
            elif a.drained:
                end(a, "completed")
    return outcomes


# ---- shared by the crash tests (unit/test_runner_crash.py, unit/test_shards.py, process/test_many_jobs.py)


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs."""


class ShuffledEngine(Engine):
    """Echo answers, returned a random subset at a time, in random order; may crash on a step."""

    def __init__(self, rng: random.Random, crash_after: int | None) -> None:
        self.model = "tiny-random"
        self._echo = EchoEngine("tiny-random", delay=0)
        self._rng = rng
        self._pending: list[EngineRequest] = []
        self._steps = 0
        self._crash_after = crash_after

    def add(self, request: EngineRequest) -> EngineResult | None:
        self._pending.append(request)
        return None

    def step(self) -> list[EngineResult]:
        self._steps += 1
        if self._crash_after is not None and self._steps >= self._crash_after:
            raise Crash()
        self._rng.shuffle(self._pending)
        k = self._rng.randint(0, len(self._pending))
        done, self._pending = self._pending[:k], self._pending[k:]
        self._echo._pending = done
        return self._echo.step()

    def in_flight(self) -> int:
        return len(self._pending)

    def abort(self, keys: list[int]) -> None:
        drop = set(keys)
        self._pending = [r for r in self._pending if r.key not in drop]

    def abort_all(self) -> None:
        self._pending.clear()


def make_ctx(spool: Spool, hooks: Hooks, config: Config) -> JobContext:
    return JobContext(config=config, node="n1", spool_root=spool.root, profiles=load_profiles(), hooks=hooks)
