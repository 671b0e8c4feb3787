"""A job directory's files, and its durable record (`.spoold/job.json`).

The user-facing files are those of SPEC section 5; spoold's own state lives in
the hidden `.spoold/` folder beside them and travels with the job to done/.
"""

from __future__ import annotations

import time
import uuid
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel

from spoold.fsutil import atomic_write_json, read_json

STATE_DIR = ".spoold"


class JobRecord(BaseModel):
    """Facts about a job that outlive any one daemon run."""

    id: str
    name: str
    original_name: str
    created_at: int
    claimed_at: float
    claimed_by: str
    in_progress_at: float | None = None
    finished_at: float | None = None
    status: str = "validating"
    failures: int = 0
    """Engine failures and unclean ends (kill -9, OOM) of runs of this job."""
    open_attempt: bool = False
    """True while a run is under way; still true on the next start means that run died."""
    attempt_mark: int = 0
    attempt_node: str | None = None
    attempt_run: str = ""
    """The daemon run (nodelock.py) that opened the attempt: an open attempt whose run still lives was taken over, not crashed."""
    """Progress (checkpoints, validating pass) when the open run started: a dead run counts only if it made none."""
    last_error: str | None = None
    retry_after: float = 0.0
    isolated_until: int = 0
    """0: the job shares the engine. Else it was in the engine beside other jobs when the engine died, so it runs
    alone until its checkpoint passes this line (the lines then in flight): a death meanwhile is its own doing."""
    no_sidecar: bool = False
    run_seconds: float = 0.0
    failure_reason: str | None = None
    pending_failure: str | None = None
    """Set at claim when the job must fail (e.g. no sidecar): a crash before finishing must not run it."""

    @classmethod
    def new(cls, name: str, original_name: str, node: str, created_at: float, claimed_at: float | None = None) -> JobRecord:
        return cls(
            id=f"batch_{uuid.uuid4().hex}",
            name=name,
            original_name=original_name,
            created_at=int(created_at),
            claimed_at=claimed_at or time.time(),
            claimed_by=node,
        )


class JobDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    # a JobDir's path never changes (a move makes a new JobDir): its file paths are built once
    input = cached_property(lambda self: self.path / "input.jsonl")
    meta = cached_property(lambda self: self.path / "meta.yaml")
    output = cached_property(lambda self: self.path / "output.jsonl")
    errors = cached_property(lambda self: self.path / "errors.jsonl")
    batch = cached_property(lambda self: self.path / "batch.json")
    state = cached_property(lambda self: self.path / STATE_DIR)
    record_path = cached_property(lambda self: self.state / "job.json")
    validation = cached_property(lambda self: self.state / "validation.json")
    cancel_marker = cached_property(lambda self: self.state / "cancel")

    def load_record(self) -> JobRecord:
        return JobRecord.model_validate(read_json(self.record_path))

    def save_record(self, record: JobRecord, sync_dir: bool = True) -> None:
        atomic_write_json(self.record_path, record.model_dump(), sync_dir=sync_dir)

    def cancel_requested(self) -> bool:
        return self.cancel_marker.exists()

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"
