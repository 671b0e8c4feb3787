"""Claiming a job: one atomic rename out of inbox/ decides the winner (SPEC section 2).

Steps, each safe to crash after:
1. make a private staging folder `processing/.claim-<token>/` naming its claimer;
2. rename `inbox/NAME.jsonl` into it — the claim itself; then look at the
   disk, not the rename's return code (NFS can report a rename that worked
   as failed), to see whether we won;
3. move the sidecar, write the job record and the first lease;
4. rename the staging folder to `processing/NAME` (or `NAME.2`, ...).
A staging folder left by a crash is finished by its node on restart, or by
anyone once it is older than the lease.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pydantic import BaseModel, ValidationError

from spoold.spool import lease as leases
from spoold.fsutil import atomic_write_json, fsync_dir, mtime_or_now, read_json
from spoold.inputcheck import refuse_unsafe
from spoold.spool.jobdir import STATE_DIR, JobDir, JobRecord
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.layout import Spool
from spoold.spool.states import name_taken, rename_unique

log = logging.getLogger(__name__)

CLAIMER_FILE = "claimer.json"


class Claimer(BaseModel):
    node: str
    pid: int
    name: str
    at: float


def claim(spool: Spool, name: str, node: str, turn: AbstractContextManager[object] | None = None) -> JobDir | None:
    """Claim inbox job `name`; returns its processing/ directory, or None if another daemon won."""
    claimed = claim_with_lease(spool, name, node, turn)
    return claimed[0] if claimed else None


def claim_with_lease(
    spool: Spool, name: str, node: str, turn: AbstractContextManager[object] | None = None
) -> tuple[JobDir, leases.Lease] | None:
    """Claim inbox job `name`; returns its processing/ directory and our lease, or None if another daemon won.

    `turn` wraps the claiming rename itself: a daemon claiming on several threads
    passes its jobs through it in admission (priority) order; the fsyncs after it overlap.
    """
    staging = spool.processing / f".claim-{uuid.uuid4().hex}"
    os.mkdir(staging)
    os.mkdir(staging / STATE_DIR)
    claimer = Claimer(node=node, pid=os.getpid(), name=name, at=time.time()).model_dump()
    atomic_write_json(staging / STATE_DIR / CLAIMER_FILE, claimer, durable=False)  # lost in a power cut: recovered after lease_seconds
    source = spool.inbox / f"{name}{INPUT_SUFFIX}"
    with turn or nullcontext():
        created_at = mtime_or_now(source)
        claimed_at = time.time()
        try:
            os.rename(source, staging / "input.jsonl")
        except FileNotFoundError:
            pass  # another daemon was first (or NFS misreported our success: the disk decides below)
        except OSError:
            if not (staging / "input.jsonl").exists() and _remove_empty_staging(staging):
                raise  # e.g. a sticky inbox: the daemon logs it once and backs off
    if not (staging / "input.jsonl").exists() and _remove_empty_staging(staging):
        return None
    fsync_dir(spool.inbox)
    job, lease = _complete(spool, staging, name, node, created_at, claimed_at, fresh=True)
    assert lease is not None  # a fresh claim's first lease
    return job, lease


def recover_claims(spool: Spool, node: str, lease_seconds: float) -> list[JobDir]:
    """Finish staged claims this node left, and anyone's that have been stale for a lease period.

    "This node left" means an earlier process with our node id (one live daemon per node id,
    nodelock.py); a claim of this very process may be in flight on its job-start thread.
    """
    finished = []
    for staging in spool.staged_claims():
        claimer = _read_claimer(staging)
        age = time.time() - mtime_or_now(staging)
        others = claimer is not None and (claimer.node != node or claimer.pid == os.getpid())
        if others and age <= lease_seconds:
            continue
        if claimer is None and age <= lease_seconds:
            continue
        mine = spool.processing / f".claim-{uuid.uuid4().hex}"
        try:
            os.rename(staging, mine)  # take it over atomically before touching it
        except FileNotFoundError:
            pass  # someone else took it, or NFS misreported our success: look
        if not mine.exists():
            continue
        if not (mine / "input.jsonl").exists() and _remove_empty_staging(mine):
            continue  # died before the claim rename: nothing was taken
        name = claimer.name if claimer else mine.name
        log.info("finishing an interrupted claim of %s", name)
        finished.append(_complete(spool, mine, name, node, mtime_or_now(mine / "input.jsonl"))[0])
    return finished


def _complete(
    spool: Spool, staging: Path, name: str, node: str, created_at: float, claimed_at: float | None = None, fresh: bool = False
) -> tuple[JobDir, leases.Lease | None]:
    """Move the sidecar in, write the first lease and the job record, publish the folder under the job's name.

    `fresh`: this very call's claim made the staging folder (nothing of it exists yet); otherwise it
    finishes an interrupted claim, and each step looks at what the crash left first."""
    sidecar = spool.inbox / f"{name}{SIDECAR_SUFFIX}"
    has_meta = not fresh and (staging / "meta.yaml").exists()
    if not has_meta:
        try:
            os.rename(sidecar, staging / "meta.yaml")
            has_meta = True
        except FileNotFoundError:
            pass  # an orphan job: default metadata
    job = JobDir(staging)
    # the lease is made durable by the job record's directory fsync below
    lease = leases.first(job, node) if fresh else leases.current(job) or leases.acquire(job, node, None, durable=False)
    record = None if fresh or not job.record_path.exists() else job.load_record()
    if record is None:
        record = JobRecord.new(name=name, original_name=name, node=node, created_at=created_at, claimed_at=claimed_at)
        record.pending_failure = refuse_unsafe(staging)  # symlink, FIFO, device, 2nd hard link, unreadable
        # moved in above, unless refuse_unsafe has just moved it aside: then look
        record.no_sidecar = not job.meta.exists() if record.pending_failure or not has_meta else False
        job.save_record(record)
    else:
        fsync_dir(job.state)
    fsync_dir(staging)
    final = rename_unique(staging, spool.processing, name, lambda n: name_taken(spool.root, n))
    job = JobDir(final)
    if record.name != final.name:
        record.name = final.name
        job.save_record(record)
    log.info("claimed", extra={"job": final.name})
    return job, lease


def _remove_empty_staging(staging: Path) -> bool:
    """Remove a staging folder that holds no input; never recursively, so a claimed input
    that a stale NFS lookup hid is never deleted. True if it is gone."""
    (staging / STATE_DIR / CLAIMER_FILE).unlink(missing_ok=True)
    try:
        for leftover in (staging / STATE_DIR).iterdir():
            if leftover.name.startswith("."):
                leftover.unlink(missing_ok=True)  # atomic-write temp files
        (staging / STATE_DIR).rmdir()
        staging.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not empty after all: the input is there, carry on with the claim
    return True


def _read_claimer(staging: Path) -> Claimer | None:
    try:
        return Claimer.model_validate(read_json(staging / STATE_DIR / CLAIMER_FILE))
    except (OSError, ValueError, ValidationError):
        return None
