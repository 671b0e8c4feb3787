"""The daemon loop: admit jobs, keep one engine fed from all of them, hand the rest to helpers. `tick()` is one step.

Threads, each with one job:
- main (this loop): intake, admission, the engine loop (fill, step), cuts; it
  alone pings the watchdog, so a hung engine trips it;
- job-start (a few threads; the claiming renames in admission order): claims and validating passes (jobstart.py);
- job-io (two lanes; one job's tasks always in one, in order): checkpoint commits and job ends (jobcommit.py);
- lease-keeper: renews leases of claimed jobs, notices cancels (keeper.py).
Signal handlers only set flags; the loop does the logging, checkpointing and exit.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

from spoold.config import Config, load_config
from spoold.daemon.keeper import LeaseKeeper
from spoold.daemon.lanes import Lanes, Turnstile
from spoold.daemon.resume import find_resumable
from spoold.engine import load_engine
from spoold.engine.base import EngineFailure, ModelLoadError
from spoold.engine.faults import one_line
from spoold.engine.loop import EngineLoop, resolve_window
from spoold.engine.manager import EngineManager, Loader
from spoold.engine.profiles import load_profiles
from spoold.errors import SidecarError, SpooldError
from spoold.inputcheck import read_regular
from spoold.job.active import ActiveJob, JobContext
from spoold.job.commit import close, commit, open_attempt
from spoold.job.finish import FinishHooks
from spoold.job.prevalidate import Prevalidator
from spoold.job.shards.plan import ShardDir, load_plan
from spoold.job.sidecar import Sidecar, parse_sidecar
from spoold.job.start import end_job, give_up_run, start_job
from spoold.priority import background
from spoold.service import devices
from spoold.service.facade import Service
from spoold.spool import claim as claims
from spoold.spool import lease as leases
from spoold.spool import nodelock
from spoold.spool import permissions as spoolperms
from spoold.spool.intake import Intake
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.mounts import split_spool_problem
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.readiness import ReadinessRule, Verdict
from spoold.spool.scheduler import Candidate
from spoold.spool.watcher import InboxWatcher

log = logging.getLogger(__name__)

START_THREADS = 3
"""Claims and validating passes run side by side (their fsyncs overlap); the claiming renames keep their order."""
IO_LANES = 2
"""Job I/O threads (commits, ends): one job's tasks stay in one lane, in order; lanes overlap their fsyncs."""
STATUS_EVERY = 1.0
"""Seconds between STATUS= texts while working (the watchdog is pinged every step)."""


@dataclass(frozen=True)
class _Choice:
    candidate: Candidate
    verdict: Verdict | None  # None: a processing/ job to resume
    job: JobDir | None = None
    lease: leases.Lease | None = None


@dataclass
class _Closing:
    name: str
    future: Future
    started: float  # when the job was claimed, on the monotonic clock (job duration is claim to finish)


class Daemon:
    def __init__(
        self, config: Config, config_path: str | None = None, *, loader: Loader = load_engine, service: Service | None = None,
        node_lock: nodelock.NodeLock | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.config_path = config_path
        self.spool = Spool(config.spool_dir)
        self.node = config.node
        self.node_lock = node_lock  # held before the daemon is built by `spoold run` (see hold_node)
        self.run_id = node_lock.run if node_lock else uuid.uuid4().hex  # this process's run: its lock, the attempts it opens
        self.exit_code = 0
        self.service = service or Service.create(config)
        self.profiles = load_profiles(config.engine.model_dirs)
        self.engines = EngineManager(config, loader, on_change=self.service.model_changed, load_guard=self.service.loading)
        self.intake = self._new_intake()
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.prevalidator = Prevalidator(max_line_bytes=config.max_line_bytes)
        self.finish_hooks = FinishHooks()
        self.service.wire_finish(self.finish_hooks)
        self.keeper = LeaseKeeper()
        self.starter = ThreadPoolExecutor(START_THREADS, thread_name_prefix="job-start", initializer=background)
        self.turnstile = Turnstile()  # the claiming renames themselves happen in admission (priority) order
        self.io = Lanes(IO_LANES, "job-io")
        self.loop: EngineLoop | None = None
        self.active: list[ActiveJob] = []  # fed to the engine now
        self.waiting: list[ActiveJob] = []  # started, not fed yet: its model is not loaded, or every engine slot is taken
        self.starting: dict[str, tuple[Future, str | None, float]] = {}
        self._supply: dict[str, int] = {}  # lines a starting shard brings (other starts count as one window)
        self.closing: list[_Closing] = []
        self._resumable: list[_Choice] = []
        self._sidecar_cache: dict[str, tuple[object, tuple[int, str | None]]] = {}
        self._sidecar_texts: dict[str | bytes, tuple[int, str | None]] = {}  # a valid sidecar's text -> (priority, model)
        self._not_before: dict[str, float] = {}
        self._paused_until = 0.0
        self._last_claim_recovery = time.time()
        self._next_rescan = 0.0
        self._next_processing_scan = 0.0
        self._last_trouble: str | None = None
        self._last_status = 0.0
        self._tracebacks_told: set[str] = set()
        self._left_to_others: set[str] = set()  # jobs whose model needs more GPUs than we see (logged once)
        self._split_spool: str | None = None  # found on a reload: no new work until a reload finds it fixed
        self._watcher: InboxWatcher | None = None
        self._ctx = self._new_context()

    # ---- lifecycle -------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.service.stop_signalled.set()
        self.wake.set()

    def _node_lost(self, message: str) -> None:
        """From the node lock's thread: another daemon now uses our node id. Stop; exit non-zero."""
        log.error("%s; stopping", message)
        self.exit_code = 1
        self.stop_requested = True
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    def start(self) -> None:
        if self.node_lock is None:
            self.node_lock = hold_node(self.config, self.run_id)
        try:
            self.node_lock.keep(self._node_lost)
            for warning in spoolperms.start_warnings(self.spool.root):
                log.warning("%s", warning)
            for job in claims.recover_claims(self.spool, self.node, self.config.lease_seconds):
                log.info("finished an interrupted claim", extra={"job": job.name})
            self._watcher = InboxWatcher(self.spool.inbox, self.config.watch.mode, self.wake)
            self._watcher.start()
            self.keeper.start()
            self.service.start(self.spool)
        except BaseException:
            self.node_lock.release()
            raise
        log.info("spoold ready on %s (node %s, backend %s)", self.spool.root, self.node, self.config.engine.backend)
        self.service.ready()

    def run(self) -> int:
        self.start()
        try:
            while not self.stop_requested:
                try:
                    busy = self.tick()
                except OSError as exc:
                    self._disk_trouble(exc, None)
                    busy = False
                self._beat()
                if not busy and not self.stop_requested:
                    self.wake.wait(self._sleep_for())
                    self.wake.clear()
            self._drain()
        finally:
            self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        self.service.stopping()
        log.info("stopping")
        if self._watcher:
            self._watcher.stop()
        self.starter.shutdown(wait=True)
        self.io.shutdown(wait=True)
        self.keeper.stop()
        self.prevalidator.close()
        self.engines.unload()
        self.service.stop()
        if self.node_lock is not None:
            self.node_lock.release()

    # ---- one step ----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> bool:
        """One step: look, admit, feed and step the engine, cut checkpoints. True while jobs are fed to the engine."""
        if self.reload_requested:
            self._reload()
        now = time.time() if now is None else now
        self._look(now)
        self.service.refresh(self.spool, self.intake.waiting)
        self._reap()
        self._act_on_flags()
        if self.stop_requested:
            return False  # run() drains: nothing new goes into the engine
        if not (self.service.paused_reason or self._split_spool or now < self._paused_until):
            self._admit(now)
        self._load_for_waiting()
        if self.stop_requested:  # a SIGTERM during the model load
            return False
        busy = self._feed()
        if not self.active and not self.waiting:
            self.engines.unload_if_idle()
        self._account()
        return busy

    def _look(self, now: float) -> None:
        """Keep the intake current: inotify hints, settle deadlines, and the periodic full looks."""
        if self._watcher is not None:
            names = self._watcher.changed()
            if names:
                self.intake.touch(names, now)
        self.intake.due(now)
        if now >= self._next_rescan:
            self.intake.rescan(now)
            self._next_rescan = now + self._rescan_interval()
        if now >= self._next_processing_scan:
            self._resumable = self._find_resumable(now)
            self._next_processing_scan = now + self.config.watch.poll_interval
        if now - self._last_claim_recovery >= self.config.lease_seconds:
            self._last_claim_recovery = now
            claims.recover_claims(self.spool, self.node, self.config.lease_seconds)

    def _rescan_interval(self) -> float:
        w = self.config.watch
        polling = self._watcher is None or self._watcher.mode == "poll"
        return w.poll_interval if polling else max(w.poll_interval, w.rescan_seconds)

    def _sleep_for(self) -> float:
        now = time.time()
        limits = [self._beat_interval(), self._next_rescan - now, self._next_processing_scan - now]
        deadline = self.intake.next_deadline()
        if deadline is not None:
            limits.append(deadline - now + 0.005)
        if self.starting or self.closing:
            limits.append(0.05)
        return max(0.001, min(limits))

    # ---- admission: which jobs get the free slots ---------------------------------------------

    def _current_model(self) -> str | None:
        for job in self.active + self.waiting:
            return job.model
        for _, model, _ in self.starting.values():
            if model is not None:
                return model
        return self.engines.loaded_model

    def _wants_more(self) -> bool:
        """Claim another job only when the jobs already taken cannot keep the window full much longer.

        Jobs are never hoarded: a daemon busy with a long job leaves the rest of the
        inbox to other daemons until its reader nears the end.
        """
        window = resolve_window(self.config.engine.window, self.loop.engine if self.loop else None)
        starting = sum(self._supply.get(name, window) for name in self.starting)  # a shard's size is known; a job's is not yet
        supply = sum(j.remaining() for j in self.active + self.waiting) + starting
        return supply < 2 * window

    def _admit(self, now: float) -> None:
        if self.intake.overdue(now) and (self.active or self.waiting or self.starting):
            return  # decide every upload whose time has come first, so jobs are taken in priority order across all
        if len(self.closing) >= self.config.engine.max_active_jobs:
            return  # ending jobs is the bottleneck (tiny jobs): more starts would only queue behind their ends
        limit = self.config.engine.max_active_jobs
        held = len(self.active) + len(self.waiting) + len(self.starting)
        slots = limit - held
        if len(self.active) >= limit:  # every slot is fed: start up to as many again ahead, so that a slot is
            slots = 2 * limit - held  # refilled the moment its job drains (within two windows: _wants_more)
        if slots <= 0 and self._outranks_waiting(now):
            slots = 1  # it is fed before the jobs started ahead of it, so it must not wait for their slots
        while slots > 0 and self._wants_more():
            choice = self._next_choice(now)
            if choice is None:
                return
            model, current = choice.candidate.model, self._current_model()
            busy_with_current = bool(self.active or self.waiting or self.starting)
            if model is not None and current is not None and model != current and busy_with_current:
                return  # another model's turn: let the loaded one drain once, then switch
            self._take(choice)
            slots -= 1
        self._validate_next_ahead(now)

    def _outranks_waiting(self, now: float) -> bool:
        """The next job to take has a higher priority than a job already started but not fed yet."""
        if not self.waiting:
            return False
        lowest = min(j.priority for j in self.waiting)
        nxt = self.intake.ready.pick(self._current_model(), now, self.config.engine.model_switch_after)
        return (nxt is not None and nxt.priority > lowest) or any(c.candidate.priority > lowest for c in self._resumable)

    def _next_choice(self, now: float) -> _Choice | None:
        """The inbox's next job or a processing/ job (or shard) to resume or take over, whichever has
        the higher priority; on a tie the one already in processing/ (it was claimed earlier)."""
        self._resumable = [c for c in self._resumable if c.candidate.name not in self.starting]
        inbox = self._next_inbox(now)
        if self._resumable:
            best = min(range(len(self._resumable)), key=lambda i: (-self._resumable[i].candidate.priority, i))
            if inbox is None or self._resumable[best].candidate.priority >= inbox.candidate.priority:
                return self._resumable.pop(best)
        return inbox

    def _next_inbox(self, now: float) -> _Choice | None:
        switch_after = self.config.engine.model_switch_after
        while True:
            chosen = self.intake.ready.pick(self._current_model(), now, switch_after)
            if chosen is None:
                return None
            if self._not_before.get(chosen.name, 0) > now or chosen.name in self.starting or self._too_big(chosen.name, chosen.model):
                self.intake.ready.discard(chosen.name)  # seen again at the next rescan
                continue
            return _Choice(chosen, self.intake.verdicts.get(chosen.name, Verdict.READY))

    def _take(self, choice: _Choice) -> None:
        name = choice.candidate.name
        if choice.verdict is not None:
            self.intake.taken(name)
        ticket = self.turnstile.ticket() if choice.verdict is not None else None
        future = self.starter.submit(self._start, choice, ticket)
        future.add_done_callback(lambda _: self.wake.set())
        self.starting[name] = (future, choice.candidate.model, time.monotonic())
        if isinstance(choice.job, ShardDir):
            self._supply[name] = choice.job.span.lines

    def _validate_next_ahead(self, now: float) -> None:
        """While jobs run, validate the inbox job likely to run next (large inputs, in another process)."""
        nxt = self.intake.ready.pick(self._current_model(), now, self.config.engine.model_switch_after)
        if nxt is not None:
            self._offer_ahead(nxt.name, nxt.model, nxt.size)

    def _offer_ahead(self, name: str, model: str | None, size: int | None) -> None:
        """Hand an inbox input to the ahead-of-time pass; only a large one is worth a process (and a stat)."""
        if model is None or (size is not None and size < self.prevalidator.min_bytes):
            return
        profile = self.profiles.get(model)
        self.prevalidator.offer(self.spool.inbox / f"{name}{INPUT_SUFFIX}", model, profile.serves if profile else None)

    def _start(self, choice: _Choice, ticket: int | None = None) -> ActiveJob | str | None:
        """On a job-start thread: claim (or take over), then start_job."""
        name = choice.candidate.name
        fail_reason = None
        if choice.verdict is None:
            job, lease = choice.job, leases.acquire(choice.job, self.node, choice.lease)
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

    # ---- the engine ------------------------------------------------------------------------------

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
        self.closing.append(_Closing(job.name, future, time.monotonic() - (time.time() - job.record.claimed_at)))

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

    def _drain(self) -> None:
        """SIGTERM: abort what is in the engine, commit every job's finished records, leave them resumable."""
        if self.loop is not None:
            self.loop.drop_all()
        for job in self.active + self.waiting:
            self._close(job, "stopped")
        self.active, self.waiting = [], []
        for name, (future, _, _) in list(self.starting.items()):
            result = self._result(future, name)
            if isinstance(result, ActiveJob):
                self._close(result, "stopped")
        self.starting.clear()
        for closing in self.closing:
            self._result(closing.future, closing.name)
        self.closing.clear()

    # ---- what the outside world sees ----------------------------------------------------------

    def _account(self) -> None:
        loop = self.loop
        idle = 0.0
        if loop is not None and self.engines.loaded_model is not None:
            before = loop.idle_seconds
            waiting = bool(self.active or self.waiting or self.starting or len(self.intake.ready) or self._resumable)
            loop.account_idle(waiting)
            idle = loop.idle_seconds - before
        jobs = len({getattr(j.job, "job_name", j.name) for j in self.active})  # a job's shards count once
        self.service.metrics.engine_state(jobs, loop.in_flight() if loop else 0, idle)

    def status_text(self) -> str:
        if self.service.paused_reason:
            return self.service.paused_reason
        if self._split_spool:
            return f"paused: {self._split_spool}"
        if self._last_trouble and time.time() < self._paused_until:
            return f"paused: {self._last_trouble}"
        if not self.active and not self.waiting and not self.starting:
            return "idle: waiting for jobs"
        jobs = sorted(self.active, key=lambda j: -j.priority)
        shown = "; ".join(j.status_line() for j in jobs[:3]) + (f"; +{len(jobs) - 3} more" if len(jobs) > 3 else "")
        in_flight = self.loop.in_flight() if self.loop else 0
        extra = f"; {len(self.starting) + len(self.waiting)} starting" if self.starting or self.waiting else ""
        model = self.engines.loaded_model or "none"
        return f"{len(jobs)} active on {model}, {in_flight} in flight{extra}: {shown}"

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY or not self.active:
            self._last_status = now
            self.service.beat(self.status_text())
        else:
            self.service.notifier.watchdog()

    def _disk_trouble(self, exc: OSError, job: str | None) -> None:
        """One log line per distinct problem; pause new work a while instead of crashing or spinning."""
        what = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        if exc.errno == errno.EXDEV:  # a volume mounted over a spool folder since the start check
            what = split_spool_problem(self.spool.root) or what
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        pause = min(60.0, 10 * self.config.watch.poll_interval)
        if what != self._last_trouble:
            log.error("%s: pausing new work for %.0f s%s", what, pause, "; jobs resume from their checkpoints" if full else "",
                      extra={"job": job} if job else None)  # fmt: skip
            self._last_trouble = what
        self._paused_until = time.time() + pause
        self.service.disk_paused(self._paused_until)
        self.service.beat(f"paused: {what}")
        if job:
            self._not_before[job] = self._paused_until

    # ---- candidates --------------------------------------------------------------------------

    def _find_resumable(self, now: float) -> list[_Choice]:
        """processing/ jobs and shards this daemon may take now (resumable.py)."""
        mine = {j.name for j in self.active + self.waiting} | set(self.starting) | {c.name for c in self.closing}
        found = find_resumable(
            self.spool, self.node, self.config.lease_seconds, mine, self._not_before, self._peek_file, self._too_big, now
        )
        return [_Choice(r.candidate, None, r.job, r.lease) for r in found]

    def _too_big(self, name: str, model: str | None) -> bool:
        """A job whose model needs more GPUs than CUDA_VISIBLE_DEVICES lists is left to a daemon with more."""
        profile = self.profiles.get(model) if model else None
        reason = profile and devices.model_problem(model, profile.engine_args, self.config.engine.engine_args, os.environ)
        if reason and name not in self._left_to_others:
            self._left_to_others.add(name)
            log.info("left to another daemon on the spool: %s", reason, extra={"job": name})
        return bool(reason)

    def _peek(self, name: str) -> tuple[int, str | None]:
        return self._peek_file(name, self.spool.inbox / f"{name}{SIDECAR_SUFFIX}")

    def _peek_file(self, name: str, sidecar_path) -> tuple[int, str | None]:
        """Priority and model from a sidecar (cached by its stat); model None if it will fail."""
        default = self.config.engine.default_model
        try:
            st = sidecar_path.stat()
            key: object = (str(sidecar_path), st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return 0, default
        cached = self._sidecar_cache.get(name)
        if cached and cached[0] == key:
            return cached[1]
        try:
            text = read_regular(sidecar_path)
            found: tuple[int, str | None] | None = self._sidecar_texts.get(text)
            if found is None:  # thousands of jobs submitted together mostly share one sidecar text: parsed once
                sidecar = parse_sidecar(text, {h.name for h in self.config.handlers})
                found = (sidecar.priority, sidecar.model or default)
                if len(text) <= 4096 and len(self._sidecar_texts) < 1024:
                    self._sidecar_texts[text] = found
        except (SidecarError, OSError):
            found = (0, None)
        if len(self._sidecar_cache) > 100_000:
            self._sidecar_cache.clear()
        self._sidecar_cache[name] = (key, found)
        return found

    # ---- reload ------------------------------------------------------------------------------

    def _reload(self) -> None:
        self.reload_requested = False
        self.service.reloading()
        try:
            new = load_config(self.config_path)
            if new.spool_dir != self.config.spool_dir or new.node != self.node:
                log.warning("spool_dir and node_id changes need a restart; keeping %s as %s", self.spool.root, self.node)
                new = new.model_copy(update={"spool_dir": self.config.spool_dir, "node_id": self.config.node_id})
            profiles = load_profiles(new.engine.model_dirs)
            self._split_spool = split_spool_problem(self.spool.root)
            if self._split_spool:
                raise SpooldError(f"{self._split_spool}; no new jobs are taken until this is fixed and spoold reloaded")
            self.service.reconfigure(new, self.spool)
        except SpooldError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
        else:
            self.config = new
            self.profiles = profiles
            self.engines.config = new
            self.prevalidator.max_line_bytes = new.max_line_bytes
            self.intake = self._new_intake()
            self._sidecar_cache.clear()  # parsed under the old config (default model, handler names)
            self._sidecar_texts.clear()
            self._next_rescan = 0.0
            self._ctx = self._new_context()  # jobs already running keep the context they started with
            log.info("configuration reloaded from %s", self.config_path or "defaults")
        self.service.ready()

    def _new_intake(self) -> Intake:
        w = self.config.watch
        return Intake(self.spool, ReadinessRule(w.settle_seconds, w.orphan_seconds, w.require_sidecar), self._peek, self._arrived)

    def _arrived(self, name: str, size: int) -> None:
        """A large upload's sidecar is there: start its validating pass now, during the settle time, so
        that a claim finds it done (the pass counts only if the file is still the same at the claim)."""
        if size >= self.prevalidator.min_bytes:  # a small one's sidecar is not even read here
            self._offer_ahead(name, self._peek(name)[1], size)

    def _new_context(self) -> JobContext:
        return JobContext(
            config=self.config, node=self.node, spool_root=self.spool.root, profiles=self.profiles,
            hooks=self.service.run_hooks(lambda: self.stop_requested), finish_hooks=self.finish_hooks,
            handler_names={h.name for h in self.config.handlers}, prevalidated=self.prevalidator.take,
            validate_aside=self.prevalidator.validate_aside, run_id=self.run_id,
        )  # fmt: skip

    def _beat_interval(self) -> float:
        return self.service.watchdog_interval or 60.0


def hold_node(config: Config, run_id: str | None = None) -> nodelock.NodeLock:
    """Before anything else starts: the spool usable, the GPUs enough for engine.engine_args,
    our node id ours alone (one line otherwise)."""
    root = Spool(config.spool_dir).root
    problem = Spool(root).check() or split_spool_problem(root) or devices.site_problem(config.engine.engine_args, os.environ)
    if problem:
        raise SpooldError(problem)
    return nodelock.acquire(root, config.node, config.lease_seconds, run_id)
