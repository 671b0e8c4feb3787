"""Validate the next job while the current one runs, so the engine does not wait for the pass.

The pass runs in a separate process (the work loop keeps the GIL for feeding
the engine). Results are keyed by the input file's identity (device, inode,
size, mtime) and the model, which a claim's rename keeps: a summary is only
ever used for the very same bytes. Another daemon may claim the job first;
then the work is simply wasted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Collection
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from pathlib import Path

from spoold.job.reader import MAX_LINE_BYTES
from spoold.job.validate import ValidationSummary, validate_file
from spoold.priority import background

log = logging.getLogger(__name__)

MIN_BYTES = 1 << 20
"""Smaller inputs validate in well under a second: not worth a process."""
MAX_KEPT = 8

Key = tuple[int, int, int, int, str]


def file_key(path: Path, model: str) -> Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, model)


class Prevalidator:
    def __init__(self, min_bytes: int = MIN_BYTES, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.min_bytes = min_bytes
        self.max_line_bytes = max_line_bytes  # the daemon updates it on reload
        self._executor: ProcessPoolExecutor | None = None
        self._futures: dict[Key, Future[ValidationSummary]] = {}
        self._worker_up: Future[int] | None = None
        self._lock = threading.Lock()  # offered from the main thread, taken on job-start threads

    def offer(self, path: Path, model: str, serves: Collection[str] | None = None) -> None:
        """Start validating `path` in the background unless it is small, known, or a pass is busy."""
        with self._lock:
            self._offer(path, model, serves)

    def _offer(self, path: Path, model: str, serves: Collection[str] | None) -> None:
        key = file_key(path, model)
        if key is None or key[2] < self.min_bytes or key in self._futures:
            return
        if any(not f.done() for f in self._futures.values()):
            return  # one pass at a time: the machine has other work
        if len(self._futures) >= MAX_KEPT:
            oldest = next(iter(self._futures))
            del self._futures[oldest]
        log.debug("validating %s ahead of time", path.name)
        self._futures[key] = self._submit(self._start_worker(), path, model, serves)

    def finished(self, path: Path, model: str) -> bool:
        """Whether a pass for exactly this file has finished (and not been taken yet)."""
        key = file_key(path, model)
        future = self._futures.get(key) if key is not None else None
        return future is not None and future.done()

    def take(self, path: Path, model: str, wait: Callable[[], bool]) -> ValidationSummary | None:
        """The summary for exactly this file, waiting for a pass under way; None if there is none.

        `wait()` is called about once a second while waiting (the caller beats its
        watchdog there); returning False gives up.
        """
        with self._lock:
            if not self._futures:
                return None  # nothing validated ahead (small inputs never are): not even a stat
            key = file_key(path, model)
            future = self._futures.pop(key, None) if key is not None else None
        if future is None:
            return None
        if not future.done() and not self._worker_running():
            return None  # the worker process is still starting: validating inline is sooner
        return self._result_of(future, path, wait)

    def validate_aside(
        self, path: Path, model: str, keep_going: Callable[[], bool], serves: Collection[str] | None = None
    ) -> ValidationSummary | None:
        """Validate a small input now, in the worker process, if it is up: the calling job-start
        thread waits without the GIL, so the pass does not hold up the engine loop's Python while
        other jobs run. None (validate inline) while no worker runs, or if the pass fails."""
        with self._lock:
            if self._executor is None or not self._worker_running():
                return None  # no engine of a pooled backend yet (e.g. the echo backend), or still spawning
            try:
                future = self._submit(self._executor, path, model, serves)
            except RuntimeError:  # shut down meanwhile
                return None
        return self._result_of(future, path, keep_going)

    def _result_of(self, future: Future[ValidationSummary], path: Path, wait: Callable[[], bool]) -> ValidationSummary | None:
        while not future.done():
            if not wait():
                future.cancel()
                return None
            try:
                future.exception(timeout=1.0)
            except TimeoutError:
                continue
            except CancelledError:  # the daemon is stopping or reloading: the pool was shut down
                return None
        try:
            return future.result()
        except Exception as exc:  # the pass failed (file vanished, worker died): just validate inline
            log.info("validation of %s in the worker process failed (%s); validating here", path.name, exc)
            return None

    def warm(self) -> None:
        """Start the worker process now (a spawn costs about half a second), e.g. beside a model load."""
        with self._lock:
            self._start_worker()

    def _submit(self, executor: ProcessPoolExecutor, path: Path, model: str, serves: Collection[str] | None) -> Future[ValidationSummary]:
        return executor.submit(validate_file, path, model, None, self.max_line_bytes, serves)

    def _worker_running(self) -> bool:
        """The worker process has started (not merely been asked to)."""
        return self._worker_up is not None and self._worker_up.done()

    def _start_worker(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=background)
            self._worker_up = self._executor.submit(os.getpid)  # done once the worker process runs
        return self._executor

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._worker_up = None
        self._futures.clear()
