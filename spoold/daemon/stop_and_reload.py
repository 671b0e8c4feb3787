"""The stop and reload paths: signal handlers (they only set flags), the drain on SIGTERM, the reload on SIGHUP (a bad
config keeps the running one), the shutdown of every part, and holding the node id before anything starts."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

from spoold.config import Config, load_config
from spoold.daemon.admission import Admission
from spoold.engine.profiles import load_profiles
from spoold.errors import SpooldError
from spoold.job.active import ActiveJob, JobContext
from spoold.service import devices
from spoold.spool import nodelock
from spoold.spool.intake import Intake
from spoold.spool.layout import Spool
from spoold.spool.mounts import split_spool_problem
from spoold.spool.readiness import ReadinessRule

log = logging.getLogger("spoold.daemon")


class StopAndReload(Admission):
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


def hold_node(config: Config, run_id: str | None = None) -> nodelock.NodeLock:
    """Before anything else starts: the spool usable, the GPUs enough for engine.engine_args,
    our node id ours alone (one line otherwise)."""
    root = Spool(config.spool_dir).root
    problem = Spool(root).check() or split_spool_problem(root) or devices.site_problem(config.engine.engine_args, os.environ)
    if problem:
        raise SpooldError(problem)
    return nodelock.acquire(root, config.node, config.lease_seconds, run_id)
