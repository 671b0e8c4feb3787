"""Ending shards, and the one merge that ends a sharded job.

A shard that ends records its outcome in its last checkpoint. Then its daemon
tries the merge: when every shard is finished (or the job is ending, being
cancelled or failed, and no shard has a live owner left), the daemon that
wins the job's next lease generation fences the unfinished shards (takes
their leases, so their late owners can commit nothing more), concatenates
every shard's named segments into `output.jsonl` / `errors.jsonl`, sums the
checkpoints and finishes the job once: one batch.json, one rename, the
handlers once. A crash during the merge leaves the job lease to go stale;
whoever takes the job over merges again, with the same result.
"""

from __future__ import annotations

import logging
import os
import time

from spoold.fsutil import atomic_write_text
from spoold.job.checkpoint import Checkpoint, save_checkpoint
from spoold.job.finish import JobEnd
from spoold.job.segments import merge
from spoold.job.shards.plan import ShardDir, ShardPlan, ShardState, load_plan, shard_dirs, shard_state
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir, JobRecord

log = logging.getLogger(__name__)


def record_outcome(shard: ShardDir, checkpoint: Checkpoint, outcome: str, reason: str | None = None) -> Checkpoint:
    """The shard's last checkpoint, with its outcome; a failed shard also fails the job (its siblings stop)."""
    final = checkpoint.model_copy(update={"outcome": outcome, "reason": reason})
    save_checkpoint(shard.state, final)
    if outcome == "failed":
        atomic_write_text(shard.failed_marker, (reason or "a shard failed") + "\n")
    return final


def _live(lease: leases.Lease | None, node: str, now: float, lease_seconds: float) -> bool:
    """Someone may still be working on a shard under this lease (a previous run of our node is not)."""
    if lease is None or leases.is_stale(lease, 0.0, now, lease_seconds):
        return False
    return not (lease.node == node and lease.pid != os.getpid())


def mergeable(job: JobDir, plan: ShardPlan, node: str, lease_seconds: float, now: float | None = None) -> bool:
    """Every shard finished; or the job is ending (cancel, a failed shard) and no shard is live."""
    now = time.time() if now is None else now
    shards = shard_dirs(job, plan)
    ending = shards[0].cancel_requested()  # cancelled, or a shard failed
    for shard in shards:
        state, lease, _ = shard_state(shard)
        if state.finished:
            continue
        if not ending or _live(lease, node, now, lease_seconds):
            return False
    return True


def try_merge(ctx, job: JobDir, finish, seen: leases.Lease | None, held: bool = False) -> str | None:
    """Merge and finish the sharded job if its time has come and we win it; its final status, or None.

    `seen`: the job's lease as read before the job could be mergeable (a shard's owner reads it before
    recording its outcome); winning means creating the generation after it, so of all who race for the
    merge exactly one wins. (Taking over whatever lease is current would also take over a merge in
    progress, e.g. the daemon's own on another thread: the merge ran twice.) `held`: `seen` is ours already
    (the job-start thread took over a stale lease, or one an earlier run of this node left).
    `finish(job, record, end, checkpoint)` ends the job (jobstart.end_job with the job's sidecar)."""
    plan = load_plan(job)
    if plan is None:
        return None
    cfg = ctx.config
    if not mergeable(job, plan, ctx.node, cfg.lease_seconds):
        return None
    if not held and leases.acquire(job, ctx.node, seen) is None:
        return None  # another daemon (or thread) merges
    states: list[ShardState] = []
    parts = []
    shards = shard_dirs(job, plan)
    ending = shards[0].cancel_requested()
    for shard in shards:
        state, shard_lease, ckpt = shard_state(shard)
        if not state.finished and not ending:
            return None  # taken up again since we looked: its owner ends it and merges
        if not state.finished:  # the job is ending: no late owner may commit to this shard any more
            if leases.acquire(shard, ctx.node, shard_lease) is None:
                log.info("shard %d was taken meanwhile; its owner merges", shard.span.index + 1, extra={"job": job.name})
                return None
            state = state.model_copy(update={"outcome": "cancelled"})
        states.append(state)
        parts.append((shard.state, ckpt))
    total = _sum([c for _, c in parts])
    failed = [s for s in states if s.outcome == "failed"]
    if failed:
        end = JobEnd("failed", f"shard {failed[0].index + 1} of {plan.count} failed: {failed[0].reason}")
    elif any(s.outcome == "cancelled" for s in states):
        end = JobEnd("cancelled")
    else:
        end = JobEnd("completed")
    log.info("merging %d shards (%d records)", plan.count, total.records, extra={"job": job.name})
    merge(job.path, parts, sync=False)  # finish_job fsyncs the folder before the move
    record = job.load_record()
    _add_run_facts(record, [ShardDir(job.path, span, plan.count) for span in plan.spans])
    return finish(job, record, end, total, states)


def _sum(checkpoints: list[Checkpoint]) -> Checkpoint:
    total = Checkpoint()
    for c in checkpoints:
        total.succeeded += c.succeeded
        total.failed += c.failed
        total.prompt_tokens += c.prompt_tokens
        total.completion_tokens += c.completion_tokens
        total.chunks += c.chunks
    return total


def _add_run_facts(record: JobRecord, shards: list[ShardDir]) -> None:
    """The job's running seconds and failed attempts are its shards' together."""
    seconds, failures, errors = 0.0, 0, []
    for shard in shards:
        try:
            rec = shard.load_record()
        except (OSError, ValueError):
            continue
        seconds += rec.run_seconds
        failures += rec.failures
        if rec.last_error:
            errors.append(rec.last_error)
    record.run_seconds = max(record.run_seconds, seconds)
    record.failures = max(record.failures, failures)
    record.last_error = record.last_error or (errors[0] if errors else None)
