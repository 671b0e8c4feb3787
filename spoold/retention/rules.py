"""Which finished jobs the retention policy (`retention:` in spoold.yaml) says are due to go.

A job's end is the completed_at / failed_at / cancelled_at of its batch.json.
So that a pass does not read every finished job, the job directory's mtime
screens first: batch.json is written inside the directory when the job ends
(and rewritten as handler results arrive), so the directory's mtime is never
earlier than the end; a directory changed within the retention period cannot
be due. Only the few that pass the screen have their batch.json read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoold.config import RetentionConfig
from spoold.fsutil import read_json
from spoold.spool.census import job_mtimes

FINISHED = ("done", "failed")
END_FIELDS = ("completed_at", "failed_at", "cancelled_at")


@dataclass(frozen=True)
class Due:
    state: str
    name: str
    ended_at: float

    def path(self, spool_root: Path) -> Path:
        return Path(spool_root) / self.state / self.name


def ended_at(batch: Mapping[str, Any]) -> float | None:
    """Pure. When the job ended, per its batch object (None if it does not say)."""
    times = [float(v) for k in END_FIELDS if isinstance(v := batch.get(k), (int, float)) and not isinstance(v, bool)]
    return max(times) if times else None


def is_due(ended: float, now: float, keep: float | None) -> bool:
    """Pure. `keep` None: kept forever."""
    return keep is not None and now - ended >= keep


def find_due(spool_root: Path, retention: RetentionConfig, now: float) -> Iterator[Due]:
    """Finished jobs past their retention, oldest folder entries first within each state."""
    for state in FINISHED:
        keep = retention.keep(state)
        if keep is None:
            continue
        for name, mtime in _screened(Path(spool_root) / state, now - keep):
            ended = _ended(Path(spool_root) / state / name, mtime)
            if ended is not None and is_due(ended, now, keep):
                yield Due(state, name, ended)


def _screened(folder: Path, cutoff: float) -> list[tuple[str, float]]:
    """(name, mtime) of job directories not changed since `cutoff`, oldest first."""
    found = [(name, mtime) for name, mtime in job_mtimes(folder, dirs_only=True) if mtime <= cutoff]
    return sorted(found, key=lambda item: (item[1], item[0]))


def _ended(job_dir: Path, mtime: float) -> float | None:
    """The end its batch.json records; the directory's mtime if that cannot be read. None: gone."""
    try:
        batch = read_json(job_dir / "batch.json")
    except FileNotFoundError:
        return None if not job_dir.exists() else mtime
    except (OSError, ValueError):
        return mtime
    return (ended_at(batch) if isinstance(batch, dict) else None) or mtime
