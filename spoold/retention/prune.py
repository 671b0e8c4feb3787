"""Apply the retention policy: remove (or archive) finished jobs past their time. `spoold prune`, and the daemon.

Crash safety: a job leaves done/ or failed/ by one rename into the spool's
hidden trash (`SPOOL/.spoold/trash/`, same filesystem, so the rename is atomic)
before anything is deleted or copied; `spoold status` and every other reader
see the whole job or nothing. The trash entry's name says what is to become of
it (`delete-` or `archive-`, its state, a token, its name), so a pass that is
killed half-way is finished by the next pass, as first decided. An archive on
another filesystem is copied (with fsync) to a hidden `.incoming-TOKEN` folder,
the chosen final name is noted in the trash, and only then renamed into place,
so a crash never leaves a half copy visible or archives a job twice.

One pass at a time per spool (`SpoolLock` "prune"), whichever host runs it;
and since a job leaves by one rename, no job is ever removed twice anyway.
A job whose handler runs are still pending is never touched.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spoold.config import RetentionConfig
from spoold.errors import SpooldError
from spoold.fsutil import atomic_write_text, fsync_dir
from spoold.handlers.pending import has_open_runs
from spoold.handlers.records import load_runs
from spoold.priority import background
from spoold.retention.lock import SpoolLock
from spoold.retention.rules import Due, find_due
from spoold.spool.names import unique_name
from spoold.spool.states import rename_unique

log = logging.getLogger(__name__)

TRASH_DIR = Path(".spoold") / "trash"
INCOMING = ".incoming-"


class PruneBusy(SpooldError):
    """Another pass holds the spool's prune lock."""


@dataclass
class Removed:
    due: Due
    archived_to: Path | None


@dataclass
class PruneReport:
    removed: list[Removed] = field(default_factory=list)
    kept_pending: list[Due] = field(default_factory=list)
    """Due, but handler runs are still pending: kept until they end."""
    recovered: int = 0
    """Entries an interrupted pass left in the trash, finished now."""
    errors: list[str] = field(default_factory=list)


def trash_dir(spool_root: Path) -> Path:
    return Path(spool_root) / TRASH_DIR


def prune(
    spool_root: Path,
    retention: RetentionConfig,
    node: str,
    *,
    dry_run: bool = False,
    now: float | None = None,
    on_removed: Callable[[Removed], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """One pass. Raises PruneBusy if another pass holds the lock (never for a dry run)."""
    spool_root = Path(spool_root)
    report = PruneReport()
    if dry_run:
        for due in find_due(spool_root, retention, time.time() if now is None else now):
            if _pending(due.path(spool_root)):
                report.kept_pending.append(due)
            else:
                report.removed.append(Removed(due, None))
        return report
    lock = SpoolLock(spool_root, "prune", node)
    if not lock.acquire():
        holder = lock.holder()
        who = f" (node {holder.node}, pid {holder.pid})" if holder else ""
        raise PruneBusy(f"another prune pass is running on {spool_root}{who}; try again later")
    try:
        report.recovered = _finish_trash(spool_root, retention, lock, report)
        for due in find_due(spool_root, retention, time.time() if now is None else now):
            if should_stop() or not lock.held:
                break
            removed = _remove(spool_root, due, retention, report)
            if removed is not None:
                report.removed.append(removed)
                if on_removed is not None:
                    on_removed(removed)
    finally:
        lock.release()
    return report


def _remove(spool_root: Path, due: Due, retention: RetentionConfig, report: PruneReport) -> Removed | None:
    job_dir = due.path(spool_root)
    if _pending(job_dir):
        report.kept_pending.append(due)
        return None
    action = "archive" if retention.archive_dir is not None else "delete"
    entry = trash_dir(spool_root) / f"{action}-{due.state}-{uuid.uuid4().hex[:12]}-{due.name}"
    try:
        if not _stage(job_dir, entry):
            return None  # gone meanwhile (requeued, or removed by hand)
        archived = _finish(entry, retention)
    except OSError as exc:
        report.errors.append(f"{due.state}/{due.name}: {exc.strerror or exc}")
        log.error("cannot prune %s/%s: %s", due.state, due.name, exc)
        return None
    age_days = (time.time() - due.ended_at) / 86400
    where = f"archived to {archived}" if archived else "deleted"
    log.info("pruned %s/%s (ended %.1f days ago): %s", due.state, due.name, age_days, where, extra={"job": due.name})
    return Removed(due, archived)


def _pending(job_dir: Path) -> bool:
    """Handler runs still open (or records unreadable: not ours to judge, keep it)."""
    try:
        return has_open_runs(load_runs(job_dir))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.warning("job %s: unreadable handler records, not pruned: %s", job_dir.name, exc)
        return True


def _stage(job_dir: Path, entry: Path) -> bool:
    """Rename the job out of its state folder into the trash. False if it is not there any more."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(job_dir, entry)
    except OSError as exc:
        # NFS may report a rename that happened as failed: believe the disk.
        if exc.errno != errno.ENOENT or job_dir.exists():
            raise
        if not entry.exists():
            return False
    fsync_dir(entry.parent)
    fsync_dir(job_dir.parent)
    return True


def _finish_trash(spool_root: Path, retention: RetentionConfig, lock: SpoolLock, report: PruneReport) -> int:
    """Complete what an interrupted pass decided. Returns how many entries were finished."""
    folder = trash_dir(spool_root)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return 0
    done = 0
    for name in names:
        if not lock.held:
            break
        try:
            archived = _finish(folder / name, retention)
        except (OSError, ValueError) as exc:
            report.errors.append(f"trash/{name}: {exc}")
            log.error("cannot finish pruning %s: %s", name, exc)
            continue
        log.info("finished an interrupted prune of %s%s", name, f": archived to {archived}" if archived else "")
        done += 1
    return done


def _finish(entry: Path, retention: RetentionConfig) -> Path | None:
    """Delete or archive one trash entry, as its name says. Returns the archive path, if archived."""
    action, state, token, name = entry.name.split("-", 3)
    archived = None
    if action == "archive":
        if retention.archive_dir is None:
            raise ValueError("it was to be archived but retention.archive_dir is no longer set; left in the trash")
        archived = _archive(entry, Path(retention.archive_dir) / state, name, token)
    elif action != "delete":
        raise ValueError(f"unknown trash entry {entry.name}")
    if entry.exists():
        shutil.rmtree(entry)  # after a crash half-way, whatever is left
    _note(entry).unlink(missing_ok=True)
    fsync_dir(entry.parent)
    return archived


def _archive(entry: Path, target: Path, name: str, token: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    note, staging = _note(entry), target / f"{INCOMING}{token}"
    if note.exists():  # an earlier pass copied it, chose this name, and may have renamed it
        final = Path(note.read_text(encoding="utf-8").strip())
        if final.exists() and not staging.exists():
            return final
        if staging.exists() and not final.exists():
            return _place(staging, final, note)
    if not note.exists():
        try:
            return rename_unique(entry, target, name, lambda n: (target / n).exists())  # same filesystem: atomic
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    if staging.exists():
        shutil.rmtree(staging)  # a copy cut short
    shutil.copytree(entry, staging, symlinks=True, copy_function=_copy_durably)
    for folder, _, _ in os.walk(staging):
        fsync_dir(Path(folder))
    final = target / unique_name(name, lambda n: (target / n).exists())
    atomic_write_text(note, str(final))
    return _place(staging, final, note)


def _place(staging: Path, final: Path, note: Path) -> Path:
    while True:
        try:
            os.rename(staging, final)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            final = final.parent / unique_name(final.name, _taken_in(final.parent))
            atomic_write_text(note, str(final))
    fsync_dir(final.parent)
    return final


def _note(entry: Path) -> Path:
    return entry.parent / f".{entry.name}.to"


def _copy_durably(src: str, dst: str) -> str:
    shutil.copy2(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dst


PRUNE_EVERY_SECONDS = 600.0


class PeriodicPrune:
    """The daemon's passes: in a thread of their own (off the work loop), every PRUNE_EVERY_SECONDS while retention is set."""

    def __init__(self, node: str, on_removed: Callable[[Removed], None] | None = None) -> None:
        self._node = node
        self._on_removed = on_removed
        self._next = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def maybe_start(self, spool_root: Path, retention: RetentionConfig, now: float) -> bool:
        """Start a pass if one is due and none is running; True if one started."""
        if not retention.enabled or now < self._next or self._stop.is_set():
            return False
        if self._thread is not None and self._thread.is_alive():
            return False
        self._next = now + PRUNE_EVERY_SECONDS
        self._thread = threading.Thread(target=self._pass, args=(Path(spool_root), retention), name="prune", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the job being removed now; an unfinished pass is finished by the next one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _pass(self, spool_root: Path, retention: RetentionConfig) -> None:
        background()
        try:
            report = prune(spool_root, retention, self._node, on_removed=self._on_removed, should_stop=self._stop.is_set)
        except PruneBusy as exc:
            log.debug("%s", exc)
            return
        except (OSError, SpooldError) as exc:
            log.error("retention pass failed, retrying in %.0f s: %s", PRUNE_EVERY_SECONDS, exc)
            return
        except Exception:  # a bug here must not take the daemon down; the next pass tries again
            log.exception("retention pass failed")
            return
        if report.removed or report.recovered or report.kept_pending:
            log.info(
                "retention: pruned %d job(s), finished %d interrupted, kept %d with pending handler runs",
                len(report.removed), report.recovered, len(report.kept_pending),
            )  # fmt: skip


def _taken_in(folder: Path) -> Callable[[str], bool]:
    return lambda name: (folder / name).exists()
