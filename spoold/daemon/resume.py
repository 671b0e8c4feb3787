"""Which processing/ jobs and shards a daemon may take now. Read from the disk on every look at processing/.

- a job whose lease names this node (left by an earlier run: one live daemon per node id) or is stale;
- a shard nobody holds (never claimed), whose lease is stale, or that an earlier run of this node left;
- a sharded job whose shards have all ended (or that is ending) and that nobody is merging: its merge.
Jobs and shards this daemon already has (`mine`) and those backing off (`not_before`) are left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spoold.fsutil import mtime_or_now
from spoold.job.shards.end import mergeable
from spoold.job.shards.plan import ShardPlan, load_plan, shard_dirs, shard_state
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.scheduler import Candidate
from spoold.spool.states import JobState

PeekFile = Callable[[str, Path], tuple[int, "str | None"]]
"""(name, sidecar path) -> (priority, model)."""
TooBig = Callable[[str, "str | None"], bool]


@dataclass(frozen=True)
class Resumable:
    candidate: Candidate
    job: JobDir
    """A JobDir (resume, or merge its shards) or a shards.ShardDir."""
    lease: leases.Lease | None
    """The lease seen: taking it over means creating the next generation."""


def find_resumable(
    spool: Spool, node: str, lease_seconds: float, mine: set[str], not_before: dict[str, float],
    peek_file: PeekFile, too_big: TooBig, now: float,
) -> list[Resumable]:  # fmt: skip
    found: list[Resumable] = []
    for job in spool.jobs(JobState.PROCESSING):
        if job.name in mine or not_before.get(job.name, 0) > now:
            continue
        plan = load_plan(job)
        if plan is not None:
            found.extend(_free_shards(job, plan, node, lease_seconds, mine, not_before, peek_file, too_big, now))
            continue
        current = leases.current(job)
        own = current is not None and current.node == node
        if not own and not leases.is_stale(current, mtime_or_now(job.state), now, lease_seconds):
            continue
        try:
            record = job.load_record()
        except (OSError, ValueError):
            continue
        if record.retry_after > now:
            continue
        priority, model = peek_file(job.name, job.meta)
        if too_big(job.name, model):
            continue
        found.append(Resumable(Candidate(job.name, priority, record.claimed_at, model), job, current))
    return found


def _free_shards(
    job: JobDir, plan: ShardPlan, node: str, lease_seconds: float, mine: set[str], not_before: dict[str, float],
    peek_file: PeekFile, too_big: TooBig, now: float,
) -> list[Resumable]:  # fmt: skip
    priority, model = peek_file(job.name, job.meta)
    if too_big(job.name, model):
        return []
    try:
        claimed_at = job.load_record().claimed_at
    except (OSError, ValueError):
        return []
    found = []
    for shard in shard_dirs(job, plan):
        if shard.name in mine or not_before.get(shard.name, 0) > now:
            continue
        state, lease, _ = shard_state(shard)
        if state.finished:
            continue
        if lease is not None:
            earlier_run = lease.node == node and lease.pid != os.getpid()
            if not earlier_run and not leases.is_stale(lease, 0.0, now, lease_seconds):
                continue
            try:
                if shard.record_path.exists() and shard.load_record().retry_after > now:
                    continue
            except (OSError, ValueError):
                continue
        found.append(Resumable(Candidate(shard.name, priority, claimed_at, model), shard, lease))
    if mergeable(job, plan, node, lease_seconds, now):
        current = leases.current(job)  # a live one may be this very daemon merging it on another thread: left alone
        earlier_run = current is not None and current.node == node and current.pid != os.getpid()
        if earlier_run or leases.is_stale(current, mtime_or_now(job.state), now, lease_seconds):
            found.append(Resumable(Candidate(job.name, priority, claimed_at, model), job, current))
    return found
