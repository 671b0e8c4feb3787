"""`spoold api`: uvicorn on `api.listen`, READY=1 to systemd once it listens, keys re-read on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable

import uvicorn

from spoold.api.app import create_app
from spoold.api.area import ApiArea
from spoold.api.batches.create import Settings
from spoold.api.context import ApiContext
from spoold.api.keys import KeyRing
from spoold.api.metrics import ApiMetrics
from spoold.api.models import model_names, model_objects
from spoold.config import Config
from spoold.engine.profiles import load_profiles
from spoold.errors import ConfigError, SpooldError
from spoold.service.notify import Notifier
from spoold.spool.layout import Spool

log = logging.getLogger(__name__)


def parse_listen(listen: str, what: str = "api.listen") -> tuple[str, int]:
    """ "HOST:PORT" (IPv6 in brackets) -> (host, port); port 0 picks a free one (pure)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def build_context(config: Config) -> ApiContext:
    spool = Spool(config.spool_dir)
    problem = spool.check()
    if problem:
        raise SpooldError(problem)
    area = ApiArea(spool)
    area.ensure()
    for path in area.sweep_stale_uploads():
        log.info("removed %s, left by an API process that died mid-way", path)
    api = config.api
    keys_file = api.keys_file if api.keys_file is not None and (not api.allow_anonymous or api.keys_file.exists()) else None
    if keys_file is None and not api.allow_anonymous:
        raise ConfigError("api.keys_file is not set and api.allow_anonymous is false: no request could be served")
    keys = KeyRing(keys_file, api.allow_anonymous)
    models = model_objects(load_profiles(config.engine.model_dirs))
    settings = Settings(
        model_names(models), frozenset(h.name for h in config.handlers), config.max_line_bytes, api.max_queued_requests_per_key
    )
    return ApiContext(area, keys, settings, api.max_file_bytes, f"{config.node}:api", list(config.handlers), models)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SpooldError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (it comes with uvicorn[standard] and vLLM): its transport moves request and
    response bytes with less Python per chunk than asyncio's (benchmarks/api.md); else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(config: Config) -> int:
    ctx = build_context(config)
    metrics = ApiMetrics()
    host, port = parse_listen(config.api.listen)
    sock = _bind(host, port)
    if config.api.metrics_listen:
        from prometheus_client import start_http_server

        m_host, m_port = parse_listen(config.api.metrics_listen, "api.metrics_listen")
        start_http_server(m_port, m_host, registry=metrics.registry)
    app = create_app(ctx, metrics)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=30))
    notifier = Notifier.from_env()
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # only a flag: the loop below reloads

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = sock.getsockname()
            log.info("spoold api listening on http://%s:%d/v1 (spool %s, %d key(s))", host, bound[1], ctx.area.spool.root, len(ctx.keys))
            notifier.ready(f"serving the OpenAI Batch API on {host}:{bound[1]}")
        while not task.done():
            if reload.is_set():
                reload.clear()
                notifier.reloading()
                ctx.keys.request_reload()
                await asyncio.to_thread(ctx.keys.reload_if_asked)
                notifier.ready()
            await asyncio.sleep(0.2)
        await task

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    finally:
        notifier.stopping()
        sock.close()
    return 0
