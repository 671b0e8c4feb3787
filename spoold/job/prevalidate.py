"""Validate the next job while the current one runs, so the engine does not wait for the pass.

The pass runs in separate processes (the work loop keeps the GIL for feeding
the engine); a large input is cut at line starts into one part per worker, the
parts validated side by side and merged (`validate.merge_parts`). Results are
keyed by the input file's identity (device, inode, size, mtime) and the model,
which a claim's rename keeps: a summary is only ever used for the very same
bytes. Another daemon may claim the job first; then the work is simply wasted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from pathlib import Path

from spoold.job.reader import MAX_LINE_BYTES
from spoold.job.validate import Identity, ValidationSummary, first_found, merge_parts, part_bounds, validate_found, validate_part
from spoold.priority import background

log = logging.getLogger(__name__)

MIN_BYTES = 1 << 20
"""Smaller inputs validate in well under a second: not worth a process."""
MAX_KEPT = 8
SPLIT_BYTES = 8 << 20
"""From this size on an input is validated in parts, one per worker (about 40,000 chat lines: 0.4 s whole)."""
WAIT_BYTES = 32 << 20
"""From this size on a claim waits for worker processes that are still starting (about half a second) rather
than validate inline: a pass on one thread takes about 1.5 s per 32 MiB, in parts on N workers 1/N of that."""
MAX_WORKERS = 4
"""Worker processes at most (one per core up to this): each about 50 MiB, and idle while no pass runs."""


def worker_count(cpus: int | None = None) -> int:
    return max(1, min(MAX_WORKERS, (cpus if cpus is not None else os.cpu_count() or 1)))


Key = tuple[int, int, int, int, str]


def file_key(path: Path, model: str) -> Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, model)


class Prevalidator:
    def __init__(
        self,
        min_bytes: int = MIN_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
        workers: int | None = None,
        split_bytes: int = SPLIT_BYTES,
        scratch: Path | None = None,
        wait_bytes: int = WAIT_BYTES,
    ) -> None:
        self.min_bytes = min_bytes
        self.max_line_bytes = max_line_bytes  # the daemon updates it on reload
        self.workers = workers or worker_count()
        self.split_bytes = split_bytes
        self.scratch = scratch
        """Where the parts' hash files go (a temporary folder in it per pass); None: the system's temporary folder."""
        self.wait_bytes = wait_bytes
        self._executor: ProcessPoolExecutor | None = None
        self._futures: dict[Key, Future[ValidationSummary]] = {}
        self._worker_up: Future[int] | None = None
        self._lock = threading.Lock()  # offered from the main thread, taken on job-start threads

    def offer(self, path: Path, model: str, serves: Collection[str] | None = None, claimed_as: Path | None = None) -> None:
        """Start validating `path` in the background unless it is small, known, or a pass is busy.
        `claimed_as`: the name a claim renames it to, where the worker looks if `path` is gone by then."""
        with self._lock:
            self._offer(path, model, serves, claimed_as)

    def _offer(self, path: Path, model: str, serves: Collection[str] | None, claimed_as: Path | None) -> None:
        key = file_key(path, model)
        if key is None or key[2] < self.min_bytes or key in self._futures:
            return
        if any(not f.done() for f in self._futures.values()):
            return  # one pass at a time: the machine has other work
        if len(self._futures) >= MAX_KEPT:
            oldest = next(iter(self._futures))
            del self._futures[oldest]
        log.debug("validating %s ahead of time", path.name)
        executor = self._start_worker()
        parts = self.workers if key[2] >= self.split_bytes else 1
        paths, identity = (path,) if claimed_as is None else (path, claimed_as), (key[0], key[1])
        if parts == 1:
            self._futures[key] = self._submit(executor, paths, identity, model, serves)
        else:
            self._futures[key] = self._submit_split(executor, paths, identity, model, serves, parts)

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
        if not future.done() and not self._worker_running() and key is not None and key[2] < self.wait_bytes:
            return None  # the worker process is still starting: validating a smaller input inline is sooner
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
                future = self._submit(self._executor, (path,), None, model, serves)
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

    def _submit(
        self, executor: ProcessPoolExecutor, paths: tuple[Path, ...], identity: Identity | None, model: str, serves: Collection[str] | None
    ) -> Future[ValidationSummary]:
        return executor.submit(validate_found, paths, identity, model, self.max_line_bytes, serves)

    def _submit_split(
        self,
        executor: ProcessPoolExecutor,
        paths: tuple[Path, ...],
        identity: Identity,
        model: str,
        serves: Collection[str] | None,
        parts: int,
    ) -> Future[ValidationSummary]:
        """The pass in `parts` parts side by side, merged in a worker; a thread (waiting without the GIL) runs the steps."""
        outer: Future[ValidationSummary] = Future()
        outer.set_running_or_notify_cancel()
        max_line_bytes = self.max_line_bytes

        def steps(folder: Path) -> ValidationSummary:
            bounds = first_found(paths, lambda path: part_bounds(path, parts, identity))
            files = [folder / f"part-{k}" for k in range(len(bounds))]
            futures = [
                executor.submit(validate_part, paths, identity, model, start, end, file, max_line_bytes, serves)
                for (start, end), file in zip(bounds, files, strict=True)
            ]
            found = [f.result() for f in futures]
            return executor.submit(merge_parts, paths, identity, model, found, files, max_line_bytes, serves).result()

        def run() -> None:
            folder = Path(tempfile.mkdtemp(prefix="spoold-pass-", dir=self.scratch))  # the parts' id hashes, 8 bytes per line
            try:
                summary = steps(folder)
            except BaseException as exc:  # the file gone, a worker died, the pool shut down: validate inline
                shutil.rmtree(folder, ignore_errors=True)
                outer.set_exception(exc)
            else:
                shutil.rmtree(folder, ignore_errors=True)  # before the summary is handed out
                outer.set_result(summary)

        threading.Thread(target=run, name="pass-parts", daemon=True).start()
        return outer

    def _worker_running(self) -> bool:
        """The worker process has started (not merely been asked to)."""
        return self._worker_up is not None and self._worker_up.done()

    def _start_worker(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=background
            )
            ups = [self._executor.submit(os.getpid) for _ in range(self.workers)]  # each submit spawns one more worker
            self._worker_up = ups[0]  # done once a worker process runs
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
