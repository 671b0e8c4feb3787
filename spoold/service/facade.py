"""What the daemon tells the outside world: systemd (notify), Prometheus, GPU health, handlers.

One facade so the daemon loop stays thin and each concern stays in its module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spoold import __version__
from spoold.config import Config
from spoold.job.finish import FinishHooks
from spoold.retention.prune import PeriodicPrune
from spoold.service.gpu import GpuMonitor, gpu_health
from spoold.service.handler_runs import HandlerDispatcher
from spoold.service.logs import setup_logging
from spoold.service.metrics import Metrics, effective_listen
from spoold.service.notify import Notifier
from spoold.spool import recent
from spoold.spool.census import InboxView
from spoold.spool.layout import Spool

log = logging.getLogger(__name__)

SPOOL_REFRESH_SECONDS = 5.0
JOB_DONE_REFRESH_SECONDS = 1.0
HANDLER_RESCAN_SECONDS = 300.0
"""How often an idle daemon looks for handler runs planned elsewhere (e.g. by `spoold cancel`)."""
MODEL_LOAD_GRACE_SECONDS = 1800.0
"""A model load blocks the loop; the watchdog allows it this long before it counts as hung."""
STOP_EXTENSION_SECONDS = 90.0
"""SIGTERM during a model load: EXTEND_TIMEOUT_USEC= this much, re-sent until the load (then the stop) can go on."""


class _RunHooks:
    """The jobs' view of the service: stop flag, chunk metrics (called from job threads too)."""

    def __init__(self, service: Service, should_stop: Callable[[], bool]) -> None:
        self._service, self._should_stop = service, should_stop

    def should_stop(self) -> bool:
        return self._should_stop()

    def beat(self, status: str) -> None:
        self._service.beat(status)

    def chunk_committed(
        self, seconds: float, succeeded: int, failed: int, prompt_tokens: int, completion_tokens: int, model: str = ""
    ) -> None:  # fmt: skip
        metrics = self._service.metrics
        metrics.chunk_done(seconds)
        metrics.requests(succeeded, failed)
        if model:
            metrics.model_requests(model, succeeded, failed)
        metrics.tokens(prompt_tokens, completion_tokens)


class Service:
    def __init__(self, config: Config, notifier: Notifier, metrics: Metrics, gpu: GpuMonitor) -> None:
        self.config = config
        self.notifier = notifier
        self.metrics = metrics
        self.gpu = gpu
        self.handlers = HandlerDispatcher(config.handlers, config.node, on_outcome=metrics.handler_run)
        self.paused_reason: str | None = None
        """Set while a GPU is unhealthy (the health gate)."""
        self.stop_signalled = threading.Event()
        """Set by the SIGTERM handler (a flag, nothing more); lets a blocked model load ask systemd for time."""
        self._disk_paused_until = 0.0
        self._last_refresh = 0.0
        self._last_handler_scan = time.monotonic()
        self._rescan: threading.Thread | None = None
        self.pruner = PeriodicPrune(config.node, on_removed=lambda removed: metrics.pruned(removed.due.state))

    @classmethod
    def create(cls, config: Config) -> Service:
        return cls(config, Notifier.from_env(), Metrics(__version__), GpuMonitor())

    @property
    def watchdog_interval(self) -> float | None:
        return self.notifier.watchdog_interval

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, spool: Spool) -> None:
        self.metrics.start_server(effective_listen(self.config.metrics.listen))
        self.metrics.update_spool(spool.root)
        self.metrics.handlers_configured(h.name for h in self.config.handlers)
        self.handlers.start()
        self._start_rescan(spool)  # off the start path: indexing an older spool's history once can take minutes

    def ready(self) -> None:
        self.notifier.ready("idle: waiting for jobs")

    def reloading(self) -> None:
        self.notifier.reloading()

    def reconfigure(self, config: Config, spool: Spool) -> None:
        """Apply a reloaded config; raises ConfigError (old handlers kept) if a handler cannot be built."""
        self.handlers.reconfigure(config.handlers)
        self.metrics.relisten(effective_listen(config.metrics.listen))
        setup_logging(config.logging.level, config.logging.format)
        self.config = config
        self._start_rescan(spool)
        self.metrics.handlers_configured(h.name for h in config.handlers)

    def stopping(self) -> None:
        self.notifier.stopping("stopping: checkpointing and exiting")

    def stop(self) -> None:
        self.pruner.stop()
        self.handlers.stop(timeout=5.0)
        self.metrics.stop_server()
        self.gpu.close()
        self.notifier.close()

    # ---- while running -----------------------------------------------------------------------

    def beat(self, status: str) -> None:
        """Called from the work loop only: a hung loop stops the watchdog pings."""
        self.notifier.status(status)
        self.notifier.watchdog()

    @contextmanager
    def loading(self, model: str) -> Iterator[None]:
        self.beat(f"loading model {model}")
        extend = self.notifier.extend_stop_timeout(
            self.stop_signalled, STOP_EXTENSION_SECONDS, MODEL_LOAD_GRACE_SECONDS, f"loading model {model}"
        )
        with self.notifier.watchdog_grace(MODEL_LOAD_GRACE_SECONDS), extend:
            yield

    def run_hooks(self, should_stop: Callable[[], bool]) -> _RunHooks:
        return _RunHooks(self, should_stop)

    def disk_paused(self, until: float) -> None:
        """The loop paused new work until `until` (unix time) after a spool I/O error; shown by spoold_paused."""
        self._disk_paused_until = until
        self.metrics.paused("disk", time.time() < until)

    def refresh(self, spool: Spool, inbox_view: InboxView | None = None) -> None:
        """Spool gauges, GPU gauges and the GPU health gate, at most every few seconds."""
        self.metrics.paused("disk", time.time() < self._disk_paused_until)
        now = time.monotonic()
        if now - self._last_handler_scan >= HANDLER_RESCAN_SECONDS and not self._rescan_running():
            self._last_handler_scan = now
            self._start_rescan(spool)
        self.pruner.maybe_start(spool.root, self.config.retention, now)
        if now - self._last_refresh < SPOOL_REFRESH_SECONDS:
            return
        self._last_refresh = now
        self.metrics.update_spool(spool.root, inbox_view)
        if not self.gpu.available:
            return
        samples = self.gpu.sample()
        self.metrics.gpu(samples)
        reason = gpu_health(samples, self.config.health.max_gpu_temperature)
        paused = f"paused, not taking new jobs: {reason}" if reason else None
        if paused != self.paused_reason:
            if paused:
                log.warning("%s", paused)
            else:
                log.info("GPU healthy again; taking jobs")
        self.paused_reason = paused
        self.metrics.paused("gpu", paused is not None)

    def _start_rescan(self, spool: Spool) -> None:
        # Off the work loop: on a large NFS spool the scan could outlast the watchdog.
        self._rescan = threading.Thread(target=self.handlers.resume, args=(spool.root,), name="handler-rescan", daemon=True)
        self._rescan.start()

    def _rescan_running(self) -> bool:
        return self._rescan is not None and self._rescan.is_alive()

    def model_changed(self, model: str | None, load_seconds: float | None) -> None:
        self.metrics.model_loaded(model)
        if load_seconds is not None:
            self.metrics.model_load_seconds(load_seconds)

    def job_done(self, outcome: str, seconds: float) -> None:
        self.metrics.job_finished(outcome, seconds)
        # the spool gauges follow within a second, not after every job: counting is linear in the queue
        self._last_refresh = min(self._last_refresh, time.monotonic() - SPOOL_REFRESH_SECONDS + JOB_DONE_REFRESH_SECONDS)

    def wire_finish(self, hooks: FinishHooks) -> None:
        """Handler runs are planned on disk before a finished job leaves processing/, and started after."""
        hooks.before_move.append(lambda job, batch, selected: self.handlers.plan_runs(job.path, batch, selected))
        hooks.after_move.append(lambda job, batch, selected: self.handlers.job_finished(job.path, batch, selected))
        hooks.after_move.append(lambda job, batch, selected: recent.note(job.path))  # for `spoold status`
