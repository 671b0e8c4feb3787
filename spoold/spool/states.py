"""The one owner of job states: the spool folders, and the only function that moves jobs between them.

The folder a job sits in is its state; nothing else records it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from spoold.fsutil import fsync_dir
from spoold.spool.names import unique_name


class JobState(str, Enum):
    INBOX = "inbox"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


ALLOWED: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.INBOX, JobState.PROCESSING),  # claim (claim.py stages it)
        (JobState.INBOX, JobState.DONE),  # a queued job cancelled (claimed first, then finished)
        (JobState.PROCESSING, JobState.DONE),
        (JobState.PROCESSING, JobState.FAILED),
        (JobState.FAILED, JobState.INBOX),  # requeue
    }
)


class TransitionRefused(Exception):
    pass


def name_taken(spool_dir: Path, name: str) -> bool:
    """A job name is held while any of processing/, done/ or failed/ has it."""
    return any((spool_dir / s.value / name).exists() for s in (JobState.PROCESSING, JobState.DONE, JobState.FAILED))


def move_job(spool_dir: Path, job_path: Path, source: JobState, target: JobState, name: str | None = None) -> Path:
    """Rename a job directory into `target`, under a name nobody holds there; returns the new path."""
    if (source, target) not in ALLOWED:
        raise TransitionRefused(f"a job cannot move from {source.value} to {target.value}")
    target_dir = spool_dir / target.value
    return rename_unique(Path(job_path), target_dir, name or Path(job_path).name, lambda n: (target_dir / n).exists())


def rename_unique(src: Path, target_dir: Path, base: str, taken: Callable[[str], bool]) -> Path:
    """Rename `src` to `target_dir/base` (or `base.2`, ...); never overwrites.

    A rename onto an existing (non-empty) job directory fails, and the next
    free name is tried, so two daemons racing for one name cannot clobber
    each other.
    """
    for _ in range(1000):
        final = unique_name(base, taken)
        try:
            os.rename(src, target_dir / final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            # NFS may report a rename that happened as failed: believe the disk.
            if exc.errno != errno.ENOENT or src.exists() or not (target_dir / final).exists():
                raise
        fsync_dir(target_dir)
        if src.parent != target_dir:
            fsync_dir(src.parent)
        return target_dir / final
    raise TransitionRefused(f"no free name for {base} in {target_dir}")
