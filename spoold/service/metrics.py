"""Prometheus metrics of SPEC section 8, in a registry of their own.

Nothing happens at import time and nothing touches prometheus_client's global
registry, so tests (and vLLM, which uses the global one) can coexist with many
`Metrics` objects. The HTTP endpoint runs in prometheus_client's own daemon
thread; it only reads values the work loop sets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from spoold.errors import ConfigError, SpooldError
from spoold.spool.census import InboxView, SpoolCensus, count_spool

__all__ = ["Metrics", "count_spool", "effective_listen", "format_listen", "parse_listen"]

if TYPE_CHECKING:
    from spoold.service.gpu import GpuSample

log = logging.getLogger(__name__)

JOB_OUTCOMES = ("completed", "failed", "cancelled")
REQUEST_OUTCOMES = ("succeeded", "failed")
TOKEN_KINDS = ("prompt", "completion")
SPOOL_STATES = ("inbox", "processing", "done", "failed")
HANDLER_OUTCOMES = ("ok", "failed")
PAUSE_REASONS = ("disk", "gpu")
"""Why new work can be paused: a spool I/O error (full disk, NFS trouble), a GPU too hot or in error."""
PRUNED_STATES = ("done", "failed")

CHUNK_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
JOB_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
MODEL_LOAD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200)


class Metrics:
    """Every spoold metric; the daemon calls the methods as things happen."""

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._jobs = Counter("spoold_jobs_total", "Jobs finished, by outcome.", ["outcome"], registry=reg)
        self._requests = Counter("spoold_requests_total", "Requests (input lines) answered, by outcome.", ["outcome"], registry=reg)
        self._tokens = Counter("spoold_tokens_total", "Tokens processed, by kind.", ["kind"], registry=reg)
        self._spool = Gauge("spoold_spool_jobs", "Jobs in each spool folder (all daemons of the spool).", ["state"], registry=reg)
        self._oldest_inbox = Gauge(
            "spoold_oldest_inbox_job_timestamp_seconds",
            "Modification time of the oldest job waiting in inbox/ (0: none waiting).",
            registry=reg,
        )
        self._last_success = Gauge(
            "spoold_last_success_timestamp_seconds",
            "When this daemon last completed a job (0: not since it started).",
            registry=reg,
        )
        self._chunk_duration = Histogram(
            "spoold_chunk_duration_seconds", "Time to run one checkpointed chunk.", buckets=CHUNK_BUCKETS, registry=reg
        )
        self._job_duration = Histogram(
            "spoold_job_duration_seconds", "Time from claim to finish of a job.", buckets=JOB_BUCKETS, registry=reg
        )
        self._handler_runs = Counter(
            "spoold_handler_runs_total", "Handler runs, by handler and outcome.", ["handler", "outcome"], registry=reg
        )
        self._model_loaded = Gauge("spoold_model_loaded", "1 for the model loaded now.", ["model"], registry=reg)
        self._model_requests = Counter(
            "spoold_model_requests_total", "Requests answered, by model (a LoRA adapter counts as itself) and outcome.",
            ["model", "outcome"], registry=reg,
        )  # fmt: skip
        self._model_load = Histogram("spoold_model_load_seconds", "Time to load a model.", buckets=MODEL_LOAD_BUCKETS, registry=reg)
        self._active_jobs = Gauge("spoold_active_jobs", "Jobs this daemon feeds to its engine now.", registry=reg)
        self._in_flight = Gauge("spoold_requests_in_flight", "Requests inside the engine now.", registry=reg)
        self._engine_idle = Counter(
            "spoold_engine_idle_seconds",
            "Seconds a model was loaded and work was waiting, but nothing was in flight.",
            registry=reg,
        )
        self._paused = Gauge(
            "spoold_paused",
            "1 while this daemon takes no new work for this reason (disk: spool I/O error such as a full disk; "
            "gpu: a GPU too hot or in NVML error).",
            ["reason"],
            registry=reg,
        )
        self._pruned = Counter(
            "spoold_pruned_jobs_total", "Finished jobs removed or archived by retention, by state.", ["state"], registry=reg
        )
        self._build_info = Gauge("spoold_build_info", "spoold's version, value always 1.", ["version"], registry=reg)
        self._gpu: dict[str, Gauge] | None = None  # registered on the first GPU sample only
        self._gpu_labels: dict[str, set[str]] = {"used": set(), "total": set(), "util": set(), "temp": set()}
        for outcome in JOB_OUTCOMES:
            self._jobs.labels(outcome)
        for outcome in REQUEST_OUTCOMES:
            self._requests.labels(outcome)
        for kind in TOKEN_KINDS:
            self._tokens.labels(kind)
        for state in SPOOL_STATES:
            self._spool.labels(state)
        for reason in PAUSE_REASONS:
            self._paused.labels(reason)
        for state in PRUNED_STATES:
            self._pruned.labels(state)
        self._models: set[str] = set()
        self._spool_error: str | None = None
        self._census = SpoolCensus()
        self._server: WSGIServer | None = None
        self._listen = ""
        self._thread: Thread | None = None
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(_WithoutCreated(self.registry))
        if version is not None:
            self.build_info(version)

    # ---- events -------------------------------------------------------------------------

    def build_info(self, version: str) -> None:
        self._build_info.clear()
        self._build_info.labels(version).set(1)

    def job_finished(self, outcome: str, duration_s: float) -> None:
        """A job reached done/ or failed/; a completed one also counts as the last success."""
        _check(outcome, JOB_OUTCOMES, "job outcome")
        self._jobs.labels(outcome).inc()
        self._job_duration.observe(max(0.0, duration_s))
        if outcome == "completed":
            self.success_now()

    def requests(self, succeeded: int, failed: int) -> None:
        self._requests.labels("succeeded").inc(succeeded)
        self._requests.labels("failed").inc(failed)

    def model_requests(self, model: str, succeeded: int, failed: int) -> None:
        """Requests answered for `model`: a job's model as its results name it (an adapter's own name)."""
        self._model_requests.labels(model, "succeeded").inc(succeeded)
        self._model_requests.labels(model, "failed").inc(failed)

    def tokens(self, prompt: int, completion: int) -> None:
        self._tokens.labels("prompt").inc(prompt)
        self._tokens.labels("completion").inc(completion)

    def engine_state(self, active_jobs: int, in_flight: int, idle_seconds: float) -> None:
        """The engine loop's view: jobs fed, requests inside, and idle time to add to the counter."""
        self._active_jobs.set(active_jobs)
        self._in_flight.set(in_flight)
        if idle_seconds > 0:
            self._engine_idle.inc(idle_seconds)

    def chunk_done(self, duration_s: float) -> None:
        self._chunk_duration.observe(max(0.0, duration_s))

    def success_now(self) -> None:
        self._last_success.set_to_current_time()

    def model_loaded(self, name: str | None) -> None:
        """`name` is loaded now (None: nothing); models seen before stay exported as 0."""
        if name is not None:
            self._models.add(name)
        for model in self._models:
            self._model_loaded.labels(model).set(1 if model == name else 0)

    def model_load_seconds(self, seconds: float) -> None:
        self._model_load.observe(max(0.0, seconds))

    def paused(self, reason: str, on: bool) -> None:
        _check(reason, PAUSE_REASONS, "pause reason")
        self._paused.labels(reason).set(1 if on else 0)

    def handlers_configured(self, names: Iterable[str]) -> None:
        """Export ok/failed as 0 for each configured handler before its first run."""
        for name in names:
            for outcome in HANDLER_OUTCOMES:
                self._handler_runs.labels(name, outcome)

    def handler_run(self, handler: str, outcome: str) -> None:
        _check(outcome, HANDLER_OUTCOMES, "handler outcome")
        self._handler_runs.labels(handler, outcome).inc()

    def pruned(self, state: str) -> None:
        """Retention removed (or archived) one job from done/ or failed/."""
        _check(state, PRUNED_STATES, "pruned state")
        self._pruned.labels(state).inc()

    def set_spool_counts(self, counts: Mapping[str, int], oldest_inbox_ts: float | None) -> None:
        for state in SPOOL_STATES:
            self._spool.labels(state).set(counts.get(state, 0))
        self._oldest_inbox.set(oldest_inbox_ts or 0)

    def update_spool(self, spool_dir: Path, inbox_view: InboxView | None = None) -> bool:
        """Count the spool and set the gauges; an unreadable spool keeps the old values."""
        try:
            counts, oldest = self._census.count(spool_dir, inbox_view)
        except OSError as exc:
            reason = f"cannot count jobs in {spool_dir}: {exc.strerror or exc}"
            if reason != self._spool_error:  # once per distinct problem, not every refresh
                log.warning("%s", reason)
                self._spool_error = reason
            return False
        self._spool_error = None
        self.set_spool_counts(counts, oldest)
        return True

    def gpu(self, samples: Iterable[GpuSample]) -> None:
        """Export exactly these GPUs; GPUs missing or in error are dropped, not left stale."""
        readings: dict[str, dict[str, float]] = {"used": {}, "total": {}, "util": {}, "temp": {}}
        for s in samples:
            if s.error is not None:
                continue
            label = str(s.index)
            for key, value in (
                ("used", s.memory_used_bytes),
                ("total", s.memory_total_bytes),
                ("util", s.utilization_ratio),
                ("temp", s.temperature_celsius),
            ):
                if value is not None:
                    readings[key][label] = value
        if self._gpu is None:
            if not any(readings.values()):
                return
            self._gpu = self._register_gpu_gauges()
        for key, gauge in self._gpu.items():
            for label, value in readings[key].items():
                gauge.labels(label).set(value)
            for stale in self._gpu_labels[key] - readings[key].keys():
                gauge.remove(stale)  # set-then-remove: a scrape never sees a GPU vanish and return
            self._gpu_labels[key] = set(readings[key])

    def _register_gpu_gauges(self) -> dict[str, Gauge]:
        reg = self.registry
        return {
            "used": Gauge("spoold_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=reg),
            "total": Gauge("spoold_gpu_memory_total_bytes", "GPU memory installed.", ["gpu"], registry=reg),
            "util": Gauge("spoold_gpu_utilization_ratio", "GPU busy share, 0..1.", ["gpu"], registry=reg),
            "temp": Gauge("spoold_gpu_temperature_celsius", "GPU core temperature.", ["gpu"], registry=reg),
        }

    # ---- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition, as the endpoint serves it."""
        return generate_latest(self._exposed)

    def start_server(self, listen: str) -> tuple[str, int] | None:
        """Serve /metrics on "host:port" ("[::1]:9464", ":9464" for all IPv4); "" disables.

        Returns the bound (host, port), port 0 picking a free one. Raises ConfigError
        for a malformed address and SpooldError (one readable line) when it cannot be
        bound; a running endpoint is stopped first.
        """
        address = parse_listen(listen)
        self.stop_server()
        if address is None:
            return None
        host, port = address
        try:
            server, thread = start_http_server(port, addr=host, registry=self._exposed)
        except OSError as exc:
            raise SpooldError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        self._server, self._thread, self._listen = server, thread, listen
        bound = (str(server.server_address[0]), int(server.server_address[1]))
        log.info("serving metrics on http://%s/metrics", format_listen(*bound))
        return bound

    def relisten(self, listen: str) -> None:
        """On reload: move the endpoint if `listen` changed; if the new one fails, keep the old."""
        previous = self._listen
        if listen == previous:
            return
        try:
            parse_listen(listen)
            self.start_server(listen)
        except (ConfigError, SpooldError) as exc:
            log.error("%s; metrics stay on %s", exc, previous or "(off)")
            if self._server is None and previous:
                self.start_server(previous)
            return
        self._listen = listen

    @property
    def server_address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        return (str(self._server.server_address[0]), int(self._server.server_address[1]))

    def stop_server(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
        self._listen = ""


class _WithoutCreated(Collector):
    """prometheus_client adds `*_created` series to counters and histograms; SPEC 8 lists none."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# ---- listen addresses -------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int] | None:
    """ "host:port" / "[v6]:port" / ":port" -> (host, port); "" -> None (endpoint off)."""
    text = listen.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            sep = ""  # a bare IPv6 address needs brackets
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics.listen: {listen!r} is not host:port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    return (host or "0.0.0.0", int(port_text))


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def effective_listen(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """metrics.listen after the per-instance overrides the systemd template sets.

    $SPOOLD_METRICS_LISTEN replaces it; $SPOOLD_METRICS_PORT_OFFSET (spoold@N.service
    sets N) is added to its port, so one config serves one daemon per GPU.
    """
    env = os.environ if environ is None else environ
    listen = env.get("SPOOLD_METRICS_LISTEN", configured)
    offset_text = env.get("SPOOLD_METRICS_PORT_OFFSET", "").strip()
    address = parse_listen(listen)
    if address is None or not offset_text:
        return listen
    if not offset_text.isdigit():
        raise ConfigError(f"SPOOLD_METRICS_PORT_OFFSET={offset_text!r} is not a non-negative integer")
    host, port = address
    if port == 0:
        return listen  # any free port stays any free port
    if port + int(offset_text) > 65535:
        raise ConfigError(f"metrics port {port} + SPOOLD_METRICS_PORT_OFFSET {offset_text} is above 65535")
    return format_listen(host, port + int(offset_text))
