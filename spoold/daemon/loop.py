"""The daemon loop: admit jobs, keep one engine fed from all of them, hand the rest to helpers. `tick()` is one step.

Threads, each with one job:
- main (this loop): intake, admission, the engine loop (fill, step), cuts; it
  alone pings the watchdog, so a hung engine trips it;
- job-start (a few threads; the claiming renames in admission order): claims and validating passes (daemon/starts.py, job/start.py);
- job-io (two lanes; one job's tasks always in one, in order): checkpoint commits and job ends (job/commit.py);
- lease-keeper: renews leases of claimed jobs, notices cancels (daemon/keeper.py).
Signal handlers only set flags; the loop does the logging, checkpointing and exit.

The parts: admission.py, starts.py, feed.py, candidates.py (+ resume.py), stop_and_reload.py; the state they share: base.py.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from spoold.config import Config
from spoold.daemon.base import IO_LANES, START_THREADS, STATUS_EVERY, Choice, Closing
from spoold.daemon.keeper import LeaseKeeper, Pulse
from spoold.daemon.lanes import Lanes, Turnstile
from spoold.daemon.stop_and_reload import StopAndReload, hold_node
from spoold.engine import load_engine
from spoold.engine.loop import EngineLoop
from spoold.engine.manager import EngineManager, Loader
from spoold.engine.profiles import load_profiles
from spoold.job.active import ActiveJob
from spoold.job.finish import FinishHooks
from spoold.job.prevalidate import Prevalidator
from spoold.priority import background
from spoold.service.facade import Service
from spoold.spool import claim as claims
from spoold.spool import nodelock
from spoold.spool import permissions as spoolperms
from spoold.spool.layout import Spool
from spoold.spool.watcher import InboxWatcher

SWITCH_INTERVAL = 0.0005
"""sys.setswitchinterval for the daemon (Python's default: 5 ms). The job I/O lanes give up the GIL on every
write, fsync and stat; with the engine loop busy, each one waited up to the whole interval to take it back,
which capped a lane at a few hundred system calls a second (issue 25's profile)."""

log = logging.getLogger("spoold.daemon")

__all__ = ["Daemon", "hold_node"]


class Daemon(StopAndReload):
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
        # a step may take up to step_timeout_seconds, an idle loop sleeps up to poll_interval between turns
        self.pulse = Pulse(2 * config.engine.step_timeout_seconds + config.watch.poll_interval)
        self.keeper = LeaseKeeper(pulse=self.pulse)
        self.starter = ThreadPoolExecutor(START_THREADS, thread_name_prefix="job-start", initializer=background)
        self.turnstile = Turnstile()  # the claiming renames themselves happen in admission (priority) order
        self.io = Lanes(IO_LANES, "job-io")
        self.loop: EngineLoop | None = None
        self.active: list[ActiveJob] = []  # fed to the engine now
        self.waiting: list[ActiveJob] = []  # started, not fed yet: its model is not loaded, or every engine slot is taken
        self.starting: dict[str, tuple[Future, str | None, float]] = {}
        self._supply: dict[str, int] = {}  # lines a starting shard brings (other starts count as one window)
        self.closing: list[Closing] = []
        self._resumable: list[Choice] = []
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
        self._engine_died = False
        self._watcher: InboxWatcher | None = None
        self._ctx = self._new_context()

    def start(self) -> None:
        if self.node_lock is None:
            self.node_lock = hold_node(self.config, self.run_id)
        try:
            self.node_lock.keep(self._node_lost, self.pulse.alive)
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
        sys.setswitchinterval(SWITCH_INTERVAL)
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
        self.pulse.beat()
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY or not self.active:
            self._last_status = now
            self.service.beat(self.status_text())
        else:
            self.service.notifier.watchdog()

    def _beat_interval(self) -> float:
        return self.service.watchdog_interval or 60.0
