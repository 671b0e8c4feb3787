"""One engine at a time: load on demand, switch when asked, unload when idle."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from spoold.config import Config
from spoold.engine import load_engine
from spoold.engine.base import Engine
from spoold.engine.profiles import ModelProfile

log = logging.getLogger(__name__)

Loader = Callable[[Config, ModelProfile], Engine]
LoadGuard = Callable[[str], AbstractContextManager[None]]
"""Wraps a model load (the service lends the watchdog a long grace for it)."""


class EngineManager:
    def __init__(
        self,
        config: Config,
        loader: Loader = load_engine,
        on_change: Callable[[str | None, float | None], None] | None = None,
        load_guard: LoadGuard | None = None,
    ) -> None:
        self.config = config
        self._loader = loader
        self._on_change = on_change or (lambda model, seconds: None)
        self._load_guard: LoadGuard = load_guard or (lambda model: nullcontext())
        self._engine: Engine | None = None
        self._last_used = time.monotonic()
        self.switches = 0

    @property
    def loaded_model(self) -> str | None:
        return self._engine.model if self._engine else None

    def get(self, profile: ModelProfile) -> Engine:
        """The engine for `profile`, loading it (and unloading another) if needed; may raise ModelLoadError."""
        self._last_used = time.monotonic()
        if self._engine is not None and self._engine.model == profile.name:
            return self._engine
        if self._engine is not None:
            log.info("switching model %s -> %s", self._engine.model, profile.name)
            self.switches += 1
            self.unload()
        log.info("loading model %s (%s)", profile.name, profile.model)
        started = time.monotonic()
        with self._load_guard(profile.name):
            engine = self._loader(self.config, profile)
        seconds = time.monotonic() - started
        log.info("model %s loaded in %.1f s", profile.name, seconds)
        self._engine = engine
        self._on_change(profile.name, seconds)
        return engine

    def touch(self) -> None:
        self._last_used = time.monotonic()

    def unload_if_idle(self) -> None:
        limit = self.config.engine.idle_unload_seconds
        if self._engine is not None and limit > 0 and time.monotonic() - self._last_used >= limit:
            log.info("unloading model %s after %.0f s idle", self._engine.model, limit)
            self.unload()

    def unload(self) -> None:
        if self._engine is None:
            return
        engine, self._engine = self._engine, None
        try:
            engine.close()
        finally:
            self._on_change(None, None)
