"""Keep claimed jobs' leases fresh and notice cancels, on a thread of its own.

The main thread may block (a model load takes minutes) and the job I/O thread
may be busy; leases must not lapse meanwhile, or another daemon would take
the jobs over. Findings are flags on the job (`lost`, `cancel`), which the
main thread acts on at its next step.

But a daemon whose loop no longer runs its jobs must not keep them: the loop
beats a `Pulse` every turn (and holds it through a model load); once the pulse
is older than its limit, leases are no longer renewed, so another daemon takes
the jobs over after `lease_seconds`, as it would a crashed daemon's (issue 24).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spoold.job.active import ActiveJob
from spoold.job.commit import renew
from spoold.spool import lease as leases

log = logging.getLogger(__name__)


class Pulse:
    """The main loop's sign of life: `beat()` every turn; `holding()` around a known long wait (a model load)."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self._last = clock()
        self._held = 0

    def beat(self) -> None:
        self._last = self._clock()

    @contextmanager
    def holding(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self.beat()

    def silent_for(self) -> float:
        """Seconds since the last beat; 0 while held."""
        return 0.0 if self._held else self._clock() - self._last

    def alive(self) -> bool:
        return self.silent_for() <= self.stale_after


class LeaseKeeper:
    def __init__(self, interval: float = 1.0, pulse: Pulse | None = None) -> None:
        self.interval = interval
        self.pulse = pulse
        self._wedged = False
        self._jobs: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job: ActiveJob) -> None:
        with self._lock:
            self._jobs[job.name] = job

    def remove(self, job: ActiveJob) -> None:
        with self._lock:
            if self._jobs.get(job.name) is job:
                del self._jobs[job.name]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> None:
        """One pass over the jobs (the thread's body; tests call it directly)."""
        if self.pulse is not None and not self.pulse.alive():
            if not self._wedged:
                self._wedged = True
                log.error(
                    "the daemon loop has not stepped for %.0f s: leases are no longer renewed, so another daemon can take its jobs over",
                    self.pulse.silent_for(),
                )
            return
        if self._wedged:
            self._wedged = False
            log.info("the daemon loop steps again: renewing leases")
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.lost:
                continue
            try:
                if not job.cancel and job.job.cancel_requested():
                    failed = getattr(job.job, "failed_marker", None)
                    why = "another shard of this job failed: stopping" if failed is not None and failed.exists() else "cancelling as asked"
                    log.info(why, extra={"job": job.name})
                    job.cancel = True
                renew(job)
            except leases.LeaseLost as exc:
                log.error("%s; leaving it to its new owner", exc, extra={"job": job.name})
                job.lost = True
            except OSError as exc:  # a passing NFS error: keep trying, a lapse would invite a takeover
                log.warning("renewing the lease of %s failed (%s); retrying", job.name, exc.strerror)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.check()
