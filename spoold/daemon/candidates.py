"""Resumption's half in the daemon: the processing/ jobs and shards it may take now (find_resumable in resume.py), jobs left to
daemons with more GPUs, and the priority and model of inbox jobs read from their sidecars (cached by stat and by text)."""

from __future__ import annotations

import logging
import os

from spoold.daemon.base import Choice, DaemonBase
from spoold.daemon.resume import find_resumable
from spoold.engine.profiles import engine_model
from spoold.errors import SidecarError
from spoold.inputcheck import read_regular
from spoold.job.sidecar import parse_sidecar
from spoold.service import devices
from spoold.spool.names import SIDECAR_SUFFIX

log = logging.getLogger("spoold.daemon")


class Candidates(DaemonBase):
    def _find_resumable(self, now: float) -> list[Choice]:
        """processing/ jobs and shards this daemon may take now (resumable.py)."""
        mine = {j.name for j in self.active + self.waiting} | set(self.starting) | {c.name for c in self.closing}
        found = find_resumable(
            self.spool, self.node, self.config.lease_seconds, mine, self._not_before, self._peek_file, self._too_big, now
        )
        return [Choice(r.candidate, None, r.job, r.lease) for r in found]

    def _too_big(self, name: str, model: str | None) -> bool:
        """A job whose model needs more GPUs than CUDA_VISIBLE_DEVICES lists is left to a daemon with more."""
        profile = self.profiles.get(model) if model else None
        reason = profile and model and devices.model_problem(model, profile.engine_args, self.config.engine.engine_args, os.environ)
        if reason and name not in self._left_to_others:
            self._left_to_others.add(name)
            log.info("left to another daemon on the spool: %s", reason, extra={"job": name})
        return bool(reason)

    def _peek(self, name: str) -> tuple[int, str | None]:
        return self._peek_file(name, self.spool.inbox / f"{name}{SIDECAR_SUFFIX}")

    def _peek_file(self, name: str, sidecar_path) -> tuple[int, str | None]:
        """Priority and the engine's model from a sidecar: an adapter's base, so admission and the scheduler
        treat a base and its adapters as one model (a job for an adapter of the loaded base never switches)."""
        priority, model = self._sidecar_model(name, sidecar_path)
        return priority, engine_model(model, self.profiles) if model else None

    def _sidecar_model(self, name: str, sidecar_path) -> tuple[int, str | None]:
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
