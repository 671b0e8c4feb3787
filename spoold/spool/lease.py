"""Who works on a processing/ job: a lease the owner renews and others take over when stale.

Leases are numbered files `.spoold/lease.<gen>.json`; the highest number
holds. Taking over generation N means creating N+1 exclusively (a hard link,
which NFS honours too), so of several daemons that see the same stale lease
exactly one wins. An owner that finds a higher generation when it renews has
lost the job and stops working on it.
"""

from __future__ import annotations

import logging
import os
import re
import time

from pydantic import BaseModel, ValidationError

from spoold.fsutil import atomic_write_json, fsync_dir, read_json
from spoold.spool.jobdir import JobDir

log = logging.getLogger(__name__)

_LEASE = re.compile(r"^lease\.(\d+)\.json$")


class Lease(BaseModel):
    node: str
    pid: int
    renewed_at: float
    gen: int = 0


class LeaseLost(Exception):
    """Another daemon took this job over (we were thought dead): stop touching it."""


def current(job: JobDir) -> Lease | None:
    gens = _generations(job)
    if not gens:
        return None
    gen = max(gens)
    try:
        lease = Lease.model_validate(read_json(job.state / f"lease.{gen}.json"))
    except (FileNotFoundError, ValueError, ValidationError):
        return Lease(node="?", pid=0, renewed_at=0.0, gen=gen)
    lease.gen = gen
    return lease


def is_stale(lease: Lease | None, job_mtime: float, now: float, lease_seconds: float) -> bool:
    """Pure. A missing lease counts from the job directory's mtime (a claim that died half-way)."""
    last = lease.renewed_at if lease else job_mtime
    return now - last > lease_seconds


def first(job: JobDir, node: str) -> Lease:
    """The first lease of a job still in its claimer's private staging folder (claim.py): nobody else
    can see the folder yet, so no exclusive create is needed. Made durable by the claim's folder fsync."""
    lease = Lease(node=node, pid=os.getpid(), renewed_at=time.time(), gen=1)
    atomic_write_json(job.state / "lease.1.json", lease.model_dump(), durable=False)
    return lease


def acquire(job: JobDir, node: str, seen: Lease | None, durable: bool = True) -> Lease | None:
    """Take the job over from `seen` (None: nobody); returns our lease, or None if another daemon won.

    durable=False skips the directory fsync: for a fence taken just before the job's end, where
    only the exclusive create matters (after a power cut no former owner is left to fence out)."""
    gen = (seen.gen if seen else 0) + 1
    lease = Lease(node=node, pid=os.getpid(), renewed_at=time.time(), gen=gen)
    tmp = job.state / f".lease.{gen}.{node}.{os.getpid()}.tmp"
    atomic_write_json(tmp, lease.model_dump(), durable=False)  # the link below is what must last
    try:
        os.link(tmp, job.state / f"lease.{gen}.json")
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(job.state)
    latest = current(job)
    if latest is None or latest.gen != gen or latest.node != node:
        return None  # believe the disk, not the return code
    for old in _generations(job):
        if old < gen:
            (job.state / f"lease.{old}.json").unlink(missing_ok=True)
    return lease


def check(job: JobDir, lease: Lease) -> None:
    """Raises LeaseLost if a newer generation than ours exists (the fence before every commit writes).

    Two lookups, no listing: a takeover of generation N always creates N+1 (acquire) and then
    removes N. So N+1 present means lost; N present and N+1 absent means ours. Only when N is
    gone (a takeover of a takeover, N+1 removed too) is the directory listed, as `renew` always does."""
    state = str(job.state)
    if os.path.lexists(f"{state}/lease.{lease.gen + 1}.json"):
        raise LeaseLost(f"job {job.name} was taken over by another daemon")
    if not os.path.lexists(f"{state}/lease.{lease.gen}.json"):
        _check_listed(job, lease)


def _check_listed(job: JobDir, lease: Lease) -> None:
    if max(_generations(job), default=0) > lease.gen:
        raise LeaseLost(f"job {job.name} was taken over by another daemon")


def renew(job: JobDir, lease: Lease) -> Lease:
    """Refresh our lease; raises LeaseLost if a newer generation exists (a full listing: `check`'s lookups
    cannot see N+2 once our N was written back after a takeover removed it)."""
    _check_listed(job, lease)
    fresh = lease.model_copy(update={"renewed_at": time.time()})
    # Not fsync'd: after a power cut a lease that looks old (or unreadable) only invites a takeover,
    # and its owner is gone then anyway. The generation check above is what fences.
    atomic_write_json(job.state / f"lease.{lease.gen}.json", fresh.model_dump(), durable=False)
    return fresh


def _generations(job: JobDir) -> list[int]:
    try:
        names = os.listdir(job.state)
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in map(_LEASE.match, names) if m]
