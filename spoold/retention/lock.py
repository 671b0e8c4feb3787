"""A lock for spool-wide chores (pruning) that one daemon at a time does, on one host or many.

Like job leases (lease.py): numbered files `SPOOL/.spoold/locks/NAME.<gen>.json`,
the highest number holds. Taking the lock means creating generation N+1
exclusively with a hard link (NFS honours it), so of several daemons that find
the lock free or stale exactly one wins. The holder renews it from a helper
thread; a holder that dies leaves it to go stale. Releasing marks it free
(renewed_at 0) rather than deleting it, so generation numbers only grow and a
late-comer can never create a generation someone else already holds.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from spoold.fsutil import atomic_write_json, fsync_dir, read_json

log = logging.getLogger(__name__)

LOCKS_DIR = Path(".spoold") / "locks"
RENEW_SECONDS = 20.0
STALE_SECONDS = 120.0


class Holder(BaseModel):
    node: str
    pid: int
    renewed_at: float


class SpoolLock:
    """One named lock on a spool. `acquire()` once; `held` tells whether it is still ours."""

    def __init__(self, spool_root: Path, name: str, node: str, *, stale_seconds: float = STALE_SECONDS) -> None:
        self.folder = Path(spool_root) / LOCKS_DIR
        self.name = name
        self.node = node
        self.stale_seconds = stale_seconds
        self.gen: int | None = None
        self._lost = threading.Event()
        self._done = threading.Event()
        self._keeper: threading.Thread | None = None

    def holder(self) -> Holder | None:
        """Who holds the lock now (None: nobody, or a holder that released it or went stale)."""
        return self._look()[1]

    def _look(self) -> tuple[int, Holder | None]:
        """The highest generation and its live holder, from one listing."""
        gen = max(self._generations(), default=0)
        if gen == 0:
            return 0, None
        try:
            current = Holder.model_validate(read_json(self._path(gen)))
        except FileNotFoundError:
            return gen, None  # a newer generation replaced it meanwhile: linking gen+1 fails, as it should
        except (ValueError, ValidationError):
            current = Holder(node="?", pid=0, renewed_at=0.0)  # half-written by a crash: stale
        if time.time() - current.renewed_at > self.stale_seconds:
            return gen, None
        return gen, current

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False if someone else holds it or won the race."""
        self.folder.mkdir(parents=True, exist_ok=True)
        seen, current = self._look()
        if current is not None:
            return False
        gen = seen + 1  # from the same look: whoever took `seen + 1` since then wins, not us
        tmp = self.folder / f".{self.name}.{gen}.{os.getpid()}.tmp"
        atomic_write_json(tmp, self._me().model_dump())
        try:
            os.link(tmp, self._path(gen))
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.folder)
        if max(self._generations(), default=0) != gen:
            return False  # believe the disk, not the return code
        self.gen = gen
        for old in self._generations():
            if old < gen:
                self._path(old).unlink(missing_ok=True)
        self._keeper = threading.Thread(target=self._keep, name=f"{self.name}-lock", daemon=True)
        self._keeper.start()
        return True

    @property
    def held(self) -> bool:
        """Still ours: nobody took it over (as they may if our renewals stalled past the stale time)."""
        if self.gen is None or self._lost.is_set():
            return False
        if max(self._generations(), default=0) != self.gen:
            self._lost.set()
            return False
        return True

    def release(self) -> None:
        self._done.set()
        if self._keeper is not None:
            self._keeper.join()
        if self.gen is not None and self.held:
            try:
                atomic_write_json(self._path(self.gen), self._me().model_copy(update={"renewed_at": 0.0}).model_dump())
            except OSError as exc:  # it goes stale on its own
                log.warning("cannot release the %s lock: %s", self.name, exc)
        self.gen = None

    def _keep(self) -> None:
        while not self._done.wait(min(RENEW_SECONDS, self.stale_seconds / 4)):
            if not self.held:
                log.error("the %s lock was taken over by another daemon; stopping", self.name)
                return
            try:
                atomic_write_json(self._path(self.gen or 0), self._me().model_dump())
            except OSError as exc:  # a passing NFS error: try again at the next beat
                log.warning("renewing the %s lock failed (%s); retrying", self.name, exc)

    def _me(self) -> Holder:
        return Holder(node=self.node, pid=os.getpid(), renewed_at=time.time())

    def _path(self, gen: int) -> Path:
        return self.folder / f"{self.name}.{gen}.json"

    def _generations(self) -> list[int]:
        pattern = re.compile(rf"^{re.escape(self.name)}\.(\d+)\.json$")
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for m in map(pattern.match, names) if m]
