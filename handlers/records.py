"""Durable handler-run records, kept in the job directory so they travel with the job.

`.spoold/handlers.json` is the source of truth for which handler runs a job
owes and how they went; `batch.json`'s `spoold.handlers` is a copy for
people and scripts, rewritten after every change. Both are written with
temp + fsync + rename, so a crash leaves the old or the new record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from spoold.fsutil import atomic_write_json, read_json
from spoold.handlers import pending
from spoold.handlers.config import AnyHandlerConfig

STATE_DIR = ".spoold"
RUNS_FILE = "handlers.json"
BATCH_FILE = "batch.json"

RunStatus = Literal["pending", "retrying", "ok", "failed"]
OPEN_STATUSES: frozenset[str] = frozenset({"pending", "retrying"})
PUBLIC_FIELDS = ("status", "attempts", "last_error", "last_attempt_at", "delivered_at", "next_attempt_at")


class RunRecord(BaseModel):
    """One handler's run for one job."""

    model_config = ConfigDict(extra="ignore")

    status: RunStatus = "pending"
    attempts: int = 0
    """Attempts started; counted before each attempt, so a crash mid-attempt still counts."""
    last_error: str | None = None
    last_attempt_at: float | None = None
    delivered_at: float | None = None
    next_attempt_at: float | None = None

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES


class JobRuns(BaseModel):
    """Every handler run a finished job owes, planned once, before the first attempt."""

    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = 1
    node: str | None = None
    """The daemon that planned the runs; only it resumes them (node ids are unique per spool)."""
    batch_id: str
    status: str
    """The job's final status, which the handlers were selected for."""
    planned_at: float
    runs: dict[str, RunRecord] = {}


def runs_path(job_dir: Path) -> Path:
    return Path(job_dir) / STATE_DIR / RUNS_FILE


def load_runs(job_dir: Path) -> JobRuns | None:
    """The job's run records, or None if none were planned. Raises OSError or ValueError (corrupt)."""
    try:
        data = read_json(runs_path(job_dir))
    except FileNotFoundError:
        return None
    return JobRuns.model_validate(data)


def save_runs(job_dir: Path, runs: JobRuns, sync_dir: bool = True) -> None:
    """Commit the records (the caller then refreshes the copy in batch.json with `publish_in_batch`).
    sync_dir=False: the caller fsyncs `.spoold/` itself (finish_job does, before the move)."""
    runs_path(job_dir).parent.mkdir(exist_ok=True)
    atomic_write_json(runs_path(job_dir), runs.model_dump(mode="json"), sync_dir=sync_dir)


def publish_in_batch(job_dir: Path, runs: JobRuns) -> None:
    """Write the runs' public view into batch.json under `spoold.handlers`, leaving all else as it was."""
    path = Path(job_dir) / BATCH_FILE
    batch = read_json(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    spoold = batch.get("spoold")
    if not isinstance(spoold, dict):
        spoold = {}
        batch["spoold"] = spoold
    view = {name: run.model_dump(include=set(PUBLIC_FIELDS)) for name, run in runs.runs.items()}
    if spoold.get("handlers") == view:
        return
    spoold["handlers"] = view
    atomic_write_json(path, batch, indent=2)


def batch_for_handlers(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch object handlers receive: without the live handler results, so it is the same on every attempt."""
    result = dict(batch)
    spoold = result.get("spoold")
    if isinstance(spoold, dict) and "handlers" in spoold:
        result["spoold"] = {k: v for k, v in spoold.items() if k != "handlers"}
    return result


def select_handlers(status: str, selected: Iterable[str] | None, configs: Iterable[AnyHandlerConfig]) -> list[str]:
    """Names of the handlers a job with this final status runs: those its sidecar picked (or all), `on` this status."""
    chosen = None if selected is None else set(selected)
    return [c.name for c in configs if (chosen is None or c.name in chosen) and status in c.on]


def plan_runs(
    job_dir: Path,
    batch: Mapping[str, Any],
    selected: list[str] | None,
    configs: Iterable[AnyHandlerConfig],
    *,
    node: str | None = None,
    now: float | None = None,
    sync_dir: bool = True,
) -> JobRuns:
    """Record the job's pending handler runs in `job_dir/.spoold/handlers.json`, once per finish.

    Call it before the job leaves processing/, so the runs are on disk before
    anything could crash. A job that runs no handler gets no file (one durable
    write fewer per job). If the job already has records for this batch id and
    final status they are returned unchanged: planning twice never adds or
    repeats a run. (Records for another id or status are from an earlier life
    of the job, e.g. before a requeue, and are replaced.) Touches only
    `.spoold/handlers.json` and, while runs are open, the job's marker in the
    spool's pending-runs index. Raises OSError, or ValueError for a corrupt record.
    """
    status = str(batch.get("status", ""))
    batch_id = str(batch.get("id") or Path(job_dir).name)
    existing = load_runs(job_dir)
    if existing is not None and existing.batch_id == batch_id and existing.status == status:
        pending.mark(job_dir, existing)  # again: the index may have been lost meanwhile
        return existing
    planned_at = time.time() if now is None else now
    runs = JobRuns(
        node=node,
        batch_id=batch_id,
        status=status,
        planned_at=planned_at,
        runs={name: RunRecord(next_attempt_at=planned_at) for name in select_handlers(status, selected, configs)},
    )
    if not runs.runs and existing is None:
        return runs  # no handler runs this job: nothing to record (no file reads as no runs; planning again finds none again)
    save_runs(job_dir, runs, sync_dir)
    pending.mark(job_dir, runs)
    return runs
