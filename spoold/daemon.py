"""The daemon loop: look at the spool, pick one job, run it, repeat. `tick()` is one step.

Signal handlers only set flags; the loop does the logging, checkpointing and exit.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from spoold import claim as claims
from spoold import lease as leases
from spoold.config import Config, load_config
from spoold.engine import load_engine
from spoold.engine.manager import EngineManager, Loader
from spoold.errors import SidecarError, SpooldError
from spoold.finish import FinishHooks
from spoold.fsutil import mtime_or_now
from spoold.jobdir import JobDir
from spoold.names import SIDECAR_SUFFIX
from spoold.prevalidate import Prevalidator
from spoold.profiles import load_profiles
from spoold.readiness import ReadinessTracker, Verdict
from spoold.runner import JobRunner, Outcome, RunContext
from spoold.scheduler import Candidate, pick
from spoold.service import Service
from spoold.sidecar import parse_sidecar
from spoold.spool import Spool
from spoold.states import JobState
from spoold.watcher import InboxWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ready:
    candidate: Candidate
    verdict: Verdict | None  # None: a processing/ job to resume
    job: JobDir | None = None
    lease: leases.Lease | None = None


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None, *, loader: Loader = load_engine, service: Service | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.spool = Spool(config.spool_dir)
        self.node = config.node
        self.service = service or Service.create(config)
        self.profiles = load_profiles(config.engine.model_dirs)
        self.engines = EngineManager(config, loader, on_change=self.service.model_changed, load_guard=self.service.loading)
        self.tracker = self._new_tracker()
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self._sidecar_cache: dict[str, tuple[object, Candidate]] = {}
        self._not_before: dict[str, float] = {}
        self._paused_until = 0.0
        self._last_claim_recovery = time.time()
        self._last_trouble: str | None = None
        self._watcher: InboxWatcher | None = None
        self.prevalidator = Prevalidator()
        self._next_hint: Candidate | None = None
        self.finish_hooks = FinishHooks()
        self.service.wire_finish(self.finish_hooks)

    # ---- lifecycle -------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    def start(self) -> None:
        problem = self.spool.check()
        if problem:
            raise SpooldError(problem)
        for job in claims.recover_claims(self.spool, self.node, self.config.lease_seconds):
            log.info("finished an interrupted claim", extra={"job": job.name})
        self._watcher = InboxWatcher(self.spool.inbox, self.config.watch.mode, self.config.watch.poll_interval, self.wake)
        self._watcher.start()
        self.service.start(self.spool)
        log.info("spoold ready on %s (node %s, backend %s)", self.spool.root, self.node, self.config.engine.backend)
        self.service.ready()

    def run(self) -> int:
        self.start()
        try:
            while not self.stop_requested:
                try:
                    worked = self.tick()
                except OSError as exc:
                    self._disk_trouble(exc, None)
                    worked = False
                if not worked and not self.stop_requested:
                    self.service.beat(self._idle_status())
                    self.wake.wait(min(self.config.watch.poll_interval, self._beat_interval()))
                    self.wake.clear()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.service.stopping()
        log.info("stopping")
        if self._watcher:
            self._watcher.stop()
        self.prevalidator.close()
        self.engines.unload()
        self.service.stop()

    # ---- one step ----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> bool:
        """Look once, run at most one job (to its end, stop or retry). True if a job was run."""
        if self.reload_requested:
            self._reload()
        now = time.time() if now is None else now
        self.engines.unload_if_idle()
        self.service.refresh(self.spool)
        if self.service.paused_reason or now < self._paused_until:
            return False
        if now - self._last_claim_recovery >= self.config.lease_seconds:
            self._last_claim_recovery = now
            claims.recover_claims(self.spool, self.node, self.config.lease_seconds)
        choice = self._choose(now)
        if choice is None:
            return False
        return self._run(choice, now)

    def _choose(self, now: float) -> _Ready | None:
        resumable = self._resumable(now)
        ready = resumable or self._inbox_ready(now)
        by_name = {r.candidate.name: r for r in ready}
        switch_after = self.config.engine.model_switch_after
        chosen = pick([r.candidate for r in ready], self.engines.loaded_model, now, switch_after)
        rest = [r.candidate for r in ready if r.verdict is not None and chosen and r.candidate.name != chosen.name]
        self._next_hint = pick(rest, chosen.model if chosen else None, now, switch_after)
        return by_name[chosen.name] if chosen else None

    def _validate_next_ahead(self) -> None:
        """While this job runs, validate the inbox job likely to run next."""
        hint = self._next_hint
        if hint is not None and hint.model is not None:
            profile = self.profiles.get(hint.model)
            self.prevalidator.offer(self.spool.inbox / f"{hint.name}.jsonl", hint.model, profile.serves if profile else None)

    def _run(self, choice: _Ready, now: float) -> bool:
        name = choice.candidate.name
        fail_reason = None
        if choice.verdict is None:
            job, lease = choice.job, leases.acquire(choice.job, self.node, choice.lease)
            if job is None or lease is None:
                return False  # another daemon took it over first
            log.info("resuming from its checkpoint", extra={"job": job.name})
        else:
            job = claims.claim(self.spool, name, self.node)
            self.tracker.forget(name)
            if job is None:
                return False  # another daemon won the claim
            lease = leases.current(job)
            if choice.verdict is Verdict.NO_SIDECAR:
                fail_reason = f"no sidecar {name}{SIDECAR_SUFFIX} arrived within {self.config.watch.orphan_seconds:g} s (watch.require_sidecar is on)"
                record = job.load_record()
                record.pending_failure = fail_reason  # a crash before it is finished must not run it
                job.save_record(record)
        ctx = RunContext(
            config=self.config, node=self.node, spool_root=self.spool.root, profiles=self.profiles,
            engines=self.engines, hooks=self.service.run_hooks(lambda: self.stop_requested),
            finish_hooks=self.finish_hooks, handler_names={h.name for h in self.config.handlers},
            prevalidated=self.prevalidator.take,
        )  # fmt: skip
        self._validate_next_ahead()
        started = time.monotonic()
        runner = JobRunner(ctx, job, lease)
        try:
            outcome = runner.run(fail_reason)
        except leases.LeaseLost as exc:
            log.error("%s", exc, extra={"job": job.name})
            return True
        except OSError as exc:  # disk full, NFS trouble: the job stays resumable; back off and say so
            runner.abandon_attempt()
            self._disk_trouble(exc, job.name)
            return True
        except Exception:  # a bug, not a user mistake: keep the daemon up, back off this job
            log.exception("unexpected error; the job will be retried", extra={"job": job.name})
            self._not_before[job.name] = time.time() + 30
            return True
        self.engines.touch()  # idle time counts from the end of the last job
        self._last_trouble = None
        if outcome in (Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED):
            self.service.job_done(outcome.value, time.monotonic() - started)
        return True

    def _idle_status(self) -> str:
        if self.service.paused_reason:
            return self.service.paused_reason
        if self._last_trouble and time.time() < self._paused_until:
            return f"paused: {self._last_trouble}"
        return "idle: waiting for jobs"

    def _disk_trouble(self, exc: OSError, job: str | None) -> None:
        """One log line per distinct problem; pause new work a while instead of crashing or spinning."""
        what = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        pause = min(60.0, 10 * self.config.watch.poll_interval)
        if what != self._last_trouble:
            log.error("%s: pausing new work for %.0f s%s", what, pause, "; jobs resume from their checkpoints" if full else "",
                      extra={"job": job} if job else None)  # fmt: skip
            self._last_trouble = what
        self._paused_until = time.time() + pause
        self.service.beat(f"paused: {what}")
        if job:
            self._not_before[job] = self._paused_until

    # ---- candidates --------------------------------------------------------------------------

    def _resumable(self, now: float) -> list[_Ready]:
        """processing/ jobs this node left behind, or whose owner's lease went stale."""
        found = []
        for job in self.spool.jobs(JobState.PROCESSING):
            if self._not_before.get(job.name, 0) > now:
                continue
            current = leases.current(job)
            mine = current is not None and current.node == self.node
            if not mine and not leases.is_stale(current, mtime_or_now(job.state), now, self.config.lease_seconds):
                continue
            try:
                record = job.load_record()
            except (OSError, ValueError):
                continue
            if record.retry_after > now:
                continue
            cand = self._peek(job.name, job.meta, record.claimed_at)
            found.append(_Ready(cand, None, job, current))
        return found

    def _inbox_ready(self, now: float) -> list[_Ready]:
        verdicts = self.tracker.observe(self.spool.scan_inbox(), now)
        ready = []
        for name, verdict in verdicts.items():
            jsonl = self.spool.inbox / f"{name}.jsonl"
            try:
                queued_at = jsonl.stat().st_mtime
            except FileNotFoundError:
                continue
            cand = self._peek(name, self.spool.inbox / f"{name}{SIDECAR_SUFFIX}", queued_at)
            if verdict is Verdict.NO_SIDECAR:
                cand = Candidate(name, cand.priority, queued_at, None)  # fails fast, no engine
            ready.append(_Ready(cand, verdict))
        return ready

    def _peek(self, name: str, sidecar_path: Path, queued_at: float) -> Candidate:
        """Priority and model from a sidecar (cached by its stat); model None if it will fail."""
        try:
            st = sidecar_path.stat()
            key: object = (str(sidecar_path), st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return Candidate(name, 0, queued_at, self.config.engine.default_model)
        cached = self._sidecar_cache.get(name)
        if cached and cached[0] == key:
            return Candidate(name, cached[1].priority, queued_at, cached[1].model)
        try:
            sidecar = parse_sidecar(sidecar_path.read_bytes(), {h.name for h in self.config.handlers})
            cand = Candidate(name, sidecar.priority, queued_at, sidecar.model or self.config.engine.default_model)
        except (SidecarError, OSError):
            cand = Candidate(name, 0, queued_at, None)
        if len(self._sidecar_cache) > 10000:
            self._sidecar_cache.clear()
        self._sidecar_cache[name] = (key, cand)
        return cand

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
            self.service.reconfigure(new, self.spool)
        except SpooldError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
        else:
            self.config = new
            self.profiles = profiles
            self.engines.config = new
            self.tracker = self._new_tracker()
            log.info("configuration reloaded from %s", self.config_path or "defaults")
        self.service.ready()

    def _new_tracker(self) -> ReadinessTracker:
        w = self.config.watch
        return ReadinessTracker(settle=w.settle_seconds, orphan=w.orphan_seconds, require_sidecar=w.require_sidecar)

    def _beat_interval(self) -> float:
        return self.service.watchdog_interval or 60.0
