"""Recently finished jobs, noted as they finish, so `spoold status` finds them without looking at every finished job.

`SPOOL/.spoold/recent/<finished ns>-<state>-<NAME>` are empty files written
right after a job's final rename; the newest `KEEP` per state are kept. They
are a hint only (no fsync; a note whose job has gone is skipped): when the
notes cannot name enough jobs that still exist (a spool from an older spoold,
jobs requeued), `spoold status` falls back to a stat of every finished job.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

RECENT_DIR = Path(".spoold") / "recent"
KEEP = 100
"""Notes kept per state; trimmed back to this once there are twice as many."""


TRIM_EVERY = 20
"""A process trims the notes of a state after every this many notes of its own (a listing per
note cost more than the note itself): the folder holds at most 2 * KEEP + TRIM_EVERY per daemon."""
_written: dict[tuple[str, str], int] = {}
"""(notes folder, state) -> notes this process wrote there; a folder in it is known to exist."""


def note(job_dir: Path) -> None:
    """Note that the job at SPOOL/<state>/NAME just finished. Never raises: status falls back without it."""
    job_dir = Path(job_dir)
    state, folder = job_dir.parent.name, job_dir.parent.parent / RECENT_DIR
    key = (str(folder), state)
    try:
        entry = folder / f"{time.time_ns():020d}-{state}-{job_dir.name}"
        try:
            entry.touch()
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            entry.touch()
        written = _written[key] = _written.get(key, 0) + 1
        if written % TRIM_EVERY == 1:  # the first note of this process trims too
            _trim(folder, state)
    except OSError as exc:
        log.debug("cannot note %s as recently finished: %s", job_dir.name, exc)


def recent(spool_root: Path, state: str, count: int) -> list[str]:
    """Up to `count` noted job names of `state` that still exist, newest first.

    Fewer than `count` means the notes ran out: complete only if the folder holds no more jobs than that.
    """
    folder = Path(spool_root) / RECENT_DIR
    try:
        notes = sorted((n for n in os.listdir(folder) if _state(n) == state), reverse=True)
    except FileNotFoundError:
        return []
    names: list[str] = []
    for entry in notes:
        name = entry.split("-", 2)[2]
        if name not in names and (Path(spool_root) / state / name).is_dir():
            names.append(name)
            if len(names) == count:
                break
    return names


def _state(note_name: str) -> str | None:
    parts = note_name.split("-", 2)
    return parts[1] if len(parts) == 3 and parts[0].isdigit() else None


def _trim(folder: Path, state: str) -> None:
    notes = sorted(n for n in os.listdir(folder) if _state(n) == state)
    if len(notes) <= 2 * KEEP:
        return
    for old in notes[:-KEEP]:
        try:
            os.unlink(folder / old)
        except FileNotFoundError:
            pass  # another daemon trimmed it first
