"""Run completion handlers in the background, durably (SPEC section 10).

The daemon plans a finished job's handler runs on disk (`plan_runs`) before
the job leaves processing/, then tells the dispatcher (`job_finished`).
Worker threads attempt each run off the inference path. Before an attempt
the attempt is counted on disk; right after success the run is marked
delivered on disk, so a restart (`resume`) repeats nothing that is known
to be delivered. Failures are retried with backoff until the handler's
retry policy gives up. A handler never changes a job's status or files:
only `.spoold/handlers.json` and `batch.json`'s `spoold.handlers` are written.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spoold.fsutil import read_json
from spoold.handlers import pending, records
from spoold.handlers.base import Handler, HandlerError, HandlerEvent
from spoold.handlers.config import AnyHandlerConfig
from spoold.handlers.records import JobRuns, load_runs, plan_runs, publish_in_batch, save_runs
from spoold.handlers.registry import build_handlers
from spoold.handlers.retry import next_attempt_at

__all__ = ["HandlerDispatcher", "OnOutcome", "plan_runs"]

log = logging.getLogger("spoold.handlers")

OnOutcome = Callable[[str, str], None]
"""Called as on_outcome(handler_name, "ok" | "failed") once per run, when it ends."""

ERROR_CHARS = 500


@dataclass(order=True)
class _Due:
    when: float
    seq: int
    job_dir: Path = field(compare=False)
    name: str = field(compare=False)
    key: tuple[str, str] = field(compare=False)


class HandlerDispatcher:
    """A small pool of worker threads working through due handler runs, earliest first."""

    def __init__(
        self,
        configs: Iterable[AnyHandlerConfig],
        node: str,
        on_outcome: OnOutcome | None = None,
        *,
        workers: int = 2,
        random_fn: Callable[[], float] = random.random,
    ) -> None:
        """Build every handler now, so a bad setting is a ConfigError at start, not a failed run later."""
        configs = list(configs)
        self.node = node
        self._on_outcome = on_outcome
        self._workers = max(1, workers)
        self._random = random_fn
        self._configs: dict[str, AnyHandlerConfig] = {c.name: c for c in configs}
        self._handlers: dict[str, Handler] = build_handlers(configs)
        self._cond = threading.Condition()
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._tracked: set[tuple[str, str]] = set()
        """(job dir, handler) pairs queued or being attempted: never two at once."""
        self._running = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._records_lock = threading.Lock()
        """Serialises read-modify-write of handlers.json and batch.json between workers."""

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if any(t.is_alive() for t in self._threads):
                return
            self._stopping = False
            self._threads = [threading.Thread(target=self._work, name=f"spoold-handler-{i}", daemon=True) for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Take no new attempts; wait up to `timeout` for attempts under way. Queued runs stay on disk.

        Returns False if an attempt was still running at the deadline (its
        thread is a daemon thread; the run is attempted again after a restart).
        """
        with self._cond:
            self._stopping = True
            for item in self._due:
                self._tracked.discard(item.key)
            self._due.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stopped = not any(t.is_alive() for t in self._threads)
        if stopped:
            for name, handler in self._handlers.items():
                _close(name, handler)
        return stopped

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (retries included); False at the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._due or self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def reconfigure(self, configs: Iterable[AnyHandlerConfig]) -> None:
        """Swap in new handler settings (SIGHUP); ConfigError leaves the old ones. Call resume() after."""
        configs = list(configs)
        handlers = build_handlers(configs)
        with self._cond:
            self._configs = {c.name: c for c in configs}
            self._handlers = handlers

    # ---- the core's seams --------------------------------------------------------------------

    def plan_runs(self, job_dir: Path, batch: Mapping[str, Any], selected: list[str] | None) -> JobRuns | None:
        """`plan_runs` with this daemon's handlers and node id; call before the job leaves processing/.

        Never raises (a job's results matter more than its notifications): on
        a disk error it logs, and `job_finished` tries again after the rename.
        """
        try:
            with self._records_lock:
                # before_move of finish_job, which fsyncs .spoold/ before the move
                return plan_runs(job_dir, batch, selected, self._configs.values(), node=self.node, sync_dir=False)
        except (OSError, ValueError) as exc:
            log.error("job %s: cannot record its handler runs yet: %s", Path(job_dir).name, exc)
            return None

    def job_finished(self, job_dir: Path, batch: Mapping[str, Any], selected: list[str] | None) -> None:
        """Queue the runs of a job now in done/ or failed/ (planning them first if nobody did). Never raises."""
        try:
            with self._records_lock:
                runs = plan_runs(job_dir, batch, selected, self._configs.values(), node=self.node)
                if runs.node != self.node:  # planned by a daemon that died before the rename: adopt
                    runs.node = self.node
                    save_runs(job_dir, runs)
                if pending.has_open_runs(runs):
                    pending.mark(job_dir, runs)  # now with its final folder and name
                else:
                    pending.unmark(pending.spool_of(job_dir), runs.batch_id)
        except (OSError, ValueError) as exc:
            log.error("job %s: cannot record its handler runs, none will run: %s", Path(job_dir).name, exc)
            return
        self._enqueue(Path(job_dir), runs)

    def resume(self, spool_dir: Path) -> int:
        """Queue this node's pending and retrying runs of finished jobs; returns how many.

        Reads the pending-runs index only (one marker per job that owes runs),
        not every finished job; see `spoold.handlers.pending`.
        """
        count = 0
        try:
            for job_dir, runs in pending.pending_jobs(Path(spool_dir), self.node):
                if pending.has_open_runs(runs):
                    count += self._enqueue(job_dir, runs)
                else:
                    pending.unmark(Path(spool_dir), runs.batch_id)
        except OSError as exc:
            log.error("cannot look for pending handler runs in %s: %s", spool_dir, exc)
        return count

    # ---- queue -------------------------------------------------------------------------------

    def _enqueue(self, job_dir: Path, runs: JobRuns) -> int:
        if not pending.has_open_runs(runs):
            return 0  # nothing owed (a job without handlers): no realpath, no wake-up of the workers
        now = time.time()
        real_dir = os.path.realpath(job_dir)  # one key per job however its path was spelled
        added = 0
        with self._cond:
            for name, run in runs.runs.items():
                key = (real_dir, name)
                if not run.open or key in self._tracked:
                    continue
                if name not in self._handlers:
                    log.warning("job %s: handler %s is not configured any more; its run stays pending", job_dir.name, name)
                    continue
                when = run.next_attempt_at if run.next_attempt_at is not None else now
                heapq.heappush(self._due, _Due(when, next(self._seq), job_dir, name, key))
                self._tracked.add(key)
                added += 1
            self._cond.notify_all()
        return added

    def _next_due(self) -> _Due | None:
        with self._cond:
            while not self._stopping:
                now = time.time()
                if self._due and self._due[0].when <= now:
                    self._running += 1
                    return heapq.heappop(self._due)
                self._cond.wait(self._due[0].when - now if self._due else None)
            return None

    def _work(self) -> None:
        while (item := self._next_due()) is not None:
            retry_at: float | None = None
            try:
                retry_at = self._attempt(item.job_dir, item.name)
            except Exception:  # a bug here must not kill the worker and strand every later run
                log.exception("job %s: handler %s: unexpected error in the dispatcher", item.job_dir.name, item.name)
            with self._cond:
                self._running -= 1
                if retry_at is not None and not self._stopping:
                    item.when, item.seq = retry_at, next(self._seq)
                    heapq.heappush(self._due, item)
                else:
                    self._tracked.discard(item.key)
                self._cond.notify_all()

    # ---- one attempt -------------------------------------------------------------------------

    def _attempt(self, job_dir: Path, name: str) -> float | None:
        """Count, run and record one attempt; returns when to retry, or None when the run is over."""
        with self._cond:
            config, handler = self._configs.get(name), self._handlers.get(name)
        if config is None or handler is None:
            log.warning("job %s: handler %s is not configured any more; its run stays pending", job_dir.name, name)
            return None
        with self._records_lock:
            runs = self._load(job_dir)
            run = runs.runs.get(name) if runs else None
            if runs is None or run is None or not run.open:
                return None
            run.attempts += 1
            run.last_attempt_at = time.time()
            run.next_attempt_at = None
            if not self._save(job_dir, runs):
                return None  # not recorded, so not attempted: it is resumed on the next start
        error = self._run_handler(handler, job_dir, runs, name, run.attempts)
        return self._record_result(job_dir, name, config, error)

    def _run_handler(self, handler: Handler, job_dir: Path, runs: JobRuns, name: str, attempt: int) -> HandlerError | None:
        try:
            batch = read_json(job_dir / records.BATCH_FILE)
        except (OSError, ValueError) as exc:
            return HandlerError(f"cannot read batch.json: {exc}")
        if not isinstance(batch, dict):
            return HandlerError("batch.json does not hold a JSON object")
        event = HandlerEvent(
            job=job_dir.name,
            status=runs.status,
            job_dir=job_dir,
            output=job_dir / "output.jsonl",
            errors=job_dir / "errors.jsonl",
            batch_file=job_dir / records.BATCH_FILE,
            batch=records.batch_for_handlers(batch),
            handler=name,
            attempt=attempt,
            idempotency_key=f"{runs.batch_id}:{name}",
        )
        started = time.monotonic()
        try:
            handler.handle(event)
        except HandlerError as exc:
            return exc
        except Exception as exc:  # a site's handler may raise anything; it must not hurt the others
            log.warning("job %s: handler %s raised", job_dir.name, name, exc_info=True)
            return HandlerError(f"{type(exc).__name__}: {exc}")
        log.info("job %s: handler %s done (attempt %d, %.2fs)", job_dir.name, name, attempt, time.monotonic() - started)
        return None

    def _record_result(self, job_dir: Path, name: str, config: AnyHandlerConfig, error: HandlerError | None) -> float | None:
        with self._records_lock:
            runs = self._load(job_dir)
            run = runs.runs.get(name) if runs else None
            if runs is None or run is None:
                return None
            now = time.time()
            retry_at = None
            if error is None:
                run.status, run.delivered_at, run.last_error = "ok", now, None
            else:
                run.last_error = _one_line(str(error))
                if error.retryable:
                    retry_at = next_attempt_at(
                        config.retry,
                        attempts=run.attempts,
                        planned_at=runs.planned_at,
                        now=now,
                        retry_after=error.retry_after,
                        random=self._random,
                    )
                run.status = "retrying" if retry_at is not None else "failed"
                run.next_attempt_at = retry_at
            saved = self._save(job_dir, runs)
            if saved and not pending.has_open_runs(runs):
                pending.unmark(pending.spool_of(job_dir), runs.batch_id)
        if error is not None:
            if retry_at is not None:
                log.warning(
                    "job %s: handler %s attempt %d failed, retrying in %.1fs: %s",
                    job_dir.name,
                    name,
                    run.attempts,
                    retry_at - now,
                    run.last_error,
                )
            else:
                log.error("job %s: handler %s failed after %d attempt(s): %s", job_dir.name, name, run.attempts, run.last_error)
        if retry_at is None:
            self._report(name, "ok" if error is None else "failed")
        return retry_at if saved else None

    # ---- records -----------------------------------------------------------------------------

    def _load(self, job_dir: Path) -> JobRuns | None:
        try:
            return load_runs(job_dir)
        except FileNotFoundError:
            log.warning("job %s has left %s; its handler runs stop here", job_dir.name, job_dir.parent)
        except (OSError, ValueError) as exc:
            log.error("job %s: cannot read its handler records: %s", job_dir.name, exc)
        return None

    def _save(self, job_dir: Path, runs: JobRuns) -> bool:
        try:
            save_runs(job_dir, runs)
        except OSError as exc:
            log.error("job %s: cannot record handler runs: %s", job_dir.name, exc)
            return False
        self._publish_runs(job_dir, runs)
        return True

    def _publish_runs(self, job_dir: Path, runs: JobRuns) -> None:
        try:
            publish_in_batch(job_dir, runs)
        except (OSError, ValueError) as exc:
            log.warning("job %s: cannot show handler results in batch.json: %s", job_dir.name, exc)

    def _report(self, name: str, outcome: str) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(name, outcome)
        except Exception:  # a metrics hook must not break handler bookkeeping
            log.exception("on_outcome hook failed for handler %s", name)


def _close(name: str, handler: Handler) -> None:
    try:
        handler.close()
    except Exception:  # a site's close() may raise anything; the others still close
        log.exception("handler %s: close() failed", name)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."
