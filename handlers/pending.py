"""The pending-handler-runs index: one small marker per finished job that still owes handler runs.

`SPOOL/.spoold/handler-runs/<batch id>.json` names the job's node and where it
is (`state`/`name`). `plan_runs` writes it before the job's final rename (so it
points at processing/NAME), the dispatcher rewrites it with the final folder
and name after the rename, and removes it when the job's last run ends. Finding
pending runs (daemon start, reload, the periodic rescan) reads only this
folder, so its cost follows the pending work, not the history in done/.

The folder holds `.complete` once a full scan of done/ and failed/ has filled
it. Without it (a spool from an older spoold, or the folder was lost) the next
search scans every finished job once, writes the markers it finds, and
creates `.complete`. Markers are written whether or not the index is
complete, so a job finishing during that scan is not missed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from spoold.fsutil import atomic_write_json, fsync_dir, read_json
from spoold.handlers import records  # a module reference: records imports this module too

if TYPE_CHECKING:
    from spoold.handlers.records import JobRuns

log = logging.getLogger("spoold.handlers")

INDEX_DIR = Path(".spoold") / "handler-runs"
COMPLETE = ".complete"
FINISHED = ("done", "failed")
_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,150}$")


class Marker(BaseModel):
    batch_id: str
    node: str | None = None
    state: str
    name: str


def index_dir(spool_root: Path) -> Path:
    return Path(spool_root) / INDEX_DIR


def spool_of(job_dir: Path) -> Path:
    """SPOOL for SPOOL/<state>/NAME (the layout of SPEC section 2)."""
    return Path(job_dir).parent.parent


def marker_path(spool_root: Path, batch_id: str) -> Path:
    safe = batch_id if _SAFE.match(batch_id) else hashlib.sha256(batch_id.encode()).hexdigest()
    return index_dir(spool_root) / f"{safe}.json"


def has_open_runs(runs: JobRuns | None) -> bool:
    return runs is not None and any(run.open for run in runs.runs.values())


def mark(job_dir: Path, runs: JobRuns) -> None:
    """Record that the job at `job_dir` owes runs (a no-op when none is open). Raises OSError."""
    if not has_open_runs(runs):
        return
    job_dir = Path(job_dir)
    spool = spool_of(job_dir)
    folder = index_dir(spool)
    folder.mkdir(parents=True, exist_ok=True)
    marker = Marker(batch_id=runs.batch_id, node=runs.node, state=job_dir.parent.name, name=job_dir.name)
    atomic_write_json(marker_path(spool, runs.batch_id), marker.model_dump())


def unmark(spool_root: Path, batch_id: str) -> None:
    """The job's runs are over (or the job is gone). A marker left by a crash here only costs a read later."""
    try:
        os.unlink(marker_path(spool_root, batch_id))
    except FileNotFoundError:
        pass


def is_complete(spool_root: Path) -> bool:
    return (index_dir(spool_root) / COMPLETE).exists()


def pending_jobs(spool_root: Path, node: str) -> Iterator[tuple[Path, JobRuns]]:
    """This node's finished jobs with open runs (node None: anyone's), from the index.

    If the index is not complete, scans every finished job once and completes it.
    """
    spool_root = Path(spool_root)
    if not is_complete(spool_root):
        yield from _rebuild(spool_root, node)
        return
    for path in sorted(index_dir(spool_root).glob("*.json")):
        try:
            marker = Marker.model_validate(read_json(path))
        except FileNotFoundError:
            continue  # its runs ended meanwhile
        except (OSError, ValueError, ValidationError) as exc:
            log.error("unreadable handler-runs marker %s, left alone: %s", path.name, exc)
            continue
        if marker.node not in (None, node):
            continue
        found = _locate(spool_root, marker)
        if found is None:
            log.info("job %s (%s) left the spool; its pending handler runs are dropped", marker.name, marker.batch_id)
            path.unlink(missing_ok=True)
        elif not isinstance(found, str):  # "busy": it may still be in processing/
            yield found


def _rebuild(spool_root: Path, node: str) -> Iterator[tuple[Path, JobRuns]]:
    log.info("indexing pending handler runs in %s (a full scan of done/ and failed/, once)", spool_root)
    for state in FINISHED:
        try:
            names = sorted(n for n in os.listdir(spool_root / state) if not n.startswith("."))
        except FileNotFoundError:
            continue
        for name in names:
            job_dir = spool_root / state / name
            runs = _runs(job_dir)
            if not has_open_runs(runs):
                continue
            assert runs is not None
            try:
                mark(job_dir, runs)
            except OSError as exc:
                log.error("cannot index the pending handler runs of %s: %s", name, exc)
            if runs.node in (None, node):
                yield job_dir, runs
    folder = index_dir(spool_root)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / COMPLETE, {"version": 1})
    fsync_dir(folder.parent)


def _locate(spool_root: Path, marker: Marker) -> tuple[Path, JobRuns] | str | None:
    """The job a marker means: (dir, runs); "busy" while it may still be in processing/; None if gone."""
    if marker.state in FINISHED:
        found = _match(spool_root / marker.state / marker.name, marker.batch_id)
        if found:
            return found
    if (spool_root / "processing" / marker.name).exists():
        return "busy"  # not finished yet (checked first: a job only ever moves on from processing/)
    if marker.state in FINISHED:
        return None
    # Written before the final rename, and the rewrite after it never happened
    # (a crash): the job is in done/ or failed/ under NAME or NAME.N.
    pattern = re.compile(re.escape(marker.name) + r"(\.\d+)?")
    for folder in FINISHED:
        try:
            names = os.listdir(spool_root / folder)
        except FileNotFoundError:
            continue
        for name in names:
            if pattern.fullmatch(name):
                found = _match(spool_root / folder / name, marker.batch_id)
                if found:
                    try:
                        mark(found[0], found[1])
                    except OSError:
                        pass
                    return found
    return None


def _match(job_dir: Path, batch_id: str) -> tuple[Path, JobRuns] | None:
    runs = _runs(job_dir)
    return (job_dir, runs) if runs is not None and runs.batch_id == batch_id else None


def _runs(job_dir: Path) -> JobRuns | None:
    try:
        return records.load_runs(job_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        log.error("job %s: unreadable handler records, left alone: %s", job_dir.name, exc)
        return None
