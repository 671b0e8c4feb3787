"""What the daemon holds, in one place, and the one helper every part of it uses (pausing on disk trouble).

The daemon is one object built from parts, each a module of this package and each
only calling the parts below it: base < resume (candidates) < feed (the engine) <
starts (claims on job-start threads) < admission (which jobs get the free slots) <
stop_and_reload < loop (the loop and its wiring). Every part reads and writes the
state declared here; `loop.Daemon.__init__` sets it.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from spoold.config import Config
from spoold.daemon.keeper import LeaseKeeper, Pulse
from spoold.daemon.lanes import Lanes, Turnstile
from spoold.engine.loop import EngineLoop
from spoold.engine.manager import EngineManager
from spoold.engine.profiles import ModelProfile
from spoold.job.active import ActiveJob, JobContext
from spoold.job.finish import FinishHooks
from spoold.job.prevalidate import Prevalidator
from spoold.service.facade import Service
from spoold.spool import lease as leases
from spoold.spool import nodelock
from spoold.spool.intake import Intake
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.mounts import split_spool_problem
from spoold.spool.readiness import Verdict
from spoold.spool.scheduler import Candidate
from spoold.spool.watcher import InboxWatcher

log = logging.getLogger("spoold.daemon")

START_THREADS = 3
"""Claims and validating passes run side by side (their fsyncs overlap); the claiming renames keep their order."""
IO_LANES = 2
"""Job I/O threads (commits, ends): one job's tasks stay in one lane, in order; lanes overlap their fsyncs."""
STATUS_EVERY = 1.0
"""Seconds between STATUS= texts while working (the watchdog is pinged every step)."""


@dataclass(frozen=True)
class Choice:
    """A job admission picked: an inbox job (its readiness verdict), or a processing/ job or shard to resume."""

    candidate: Candidate
    verdict: Verdict | None  # None: a processing/ job to resume
    job: JobDir | None = None
    lease: leases.Lease | None = None


@dataclass
class Closing:
    """A job whose end (last commit, move to done/ or failed/) runs on its job-io lane."""

    name: str
    future: Future
    started: float  # when the job was claimed, on the monotonic clock (job duration is claim to finish)


class DaemonBase:
    # configuration and the spool
    config: Config
    config_path: str | None
    spool: Spool
    node: str
    node_lock: nodelock.NodeLock | None
    run_id: str
    exit_code: int
    profiles: dict[str, ModelProfile]
    # the parts around the loop
    service: Service
    engines: EngineManager
    intake: Intake
    prevalidator: Prevalidator
    finish_hooks: FinishHooks
    keeper: LeaseKeeper
    pulse: Pulse  # the loop's sign of life: leases and the node lock are renewed only while it beats
    starter: ThreadPoolExecutor
    turnstile: Turnstile
    io: Lanes
    _watcher: InboxWatcher | None
    _ctx: JobContext
    # flags set by signal handlers and other threads; the loop acts on them
    wake: threading.Event
    stop_requested: bool
    reload_requested: bool
    # the jobs, by stage
    loop: EngineLoop | None
    active: list[ActiveJob]  # fed to the engine now
    waiting: list[ActiveJob]  # started, not fed yet: its model is not loaded, or every engine slot is taken
    starting: dict[str, tuple[Future, str | None, float]]  # name -> (its start, its model, when it was taken)
    _supply: dict[str, int]  # lines a starting shard brings (other starts count as one window)
    closing: list[Closing]
    _resumable: list[Choice]
    # caches and back-offs
    _sidecar_cache: dict[str, tuple[object, tuple[int, str | None]]]
    _sidecar_texts: dict[str | bytes, tuple[int, str | None]]  # a valid sidecar's text -> (priority, model)
    _not_before: dict[str, float]
    _paused_until: float
    _last_claim_recovery: float
    _next_rescan: float
    _next_processing_scan: float
    _last_trouble: str | None
    _last_status: float
    _tracebacks_told: set[str]
    _left_to_others: set[str]  # jobs whose model needs more GPUs than we see (logged once)
    _split_spool: str | None  # found on a reload: no new work until a reload finds it fixed
    _engine_died: bool  # the engine failed and was unloaded: if the reload fails too, spoold exits non-zero

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
