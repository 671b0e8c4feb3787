"""What a sharded job looks like from outside while it runs: its live batch.json and its shards' rows.

Read from the disk (the plan, each shard's lease and latest checkpoint), so
any daemon's commit, and `spoold status` on any host, sees every shard.
"""

from __future__ import annotations

import time
from typing import Any

from spoold.job.batch import build_batch
from spoold.job.checkpoint import Checkpoint
from spoold.job.shards.plan import ShardDir, load_plan, shard_dirs, shard_state
from spoold.job.validate import ValidationSummary
from spoold.spool.jobdir import JobDir


def live_batch(
    shard: ShardDir, node: str, model: str, metadata: dict[str, str], validation: ValidationSummary, chunk_size: int
) -> dict[str, Any]:
    """The job's in-progress batch.json: every shard's committed progress summed, and the shards listed."""
    job = JobDir(shard.path)
    rows = shard_rows(job) or []
    total = Checkpoint(
        succeeded=sum(r["succeeded"] for r in rows), failed=sum(r["failed"] for r in rows),
        prompt_tokens=sum(r["prompt_tokens"] for r in rows), completion_tokens=sum(r["completion_tokens"] for r in rows),
        chunks=sum(r["chunks"] for r in rows),
    )  # fmt: skip
    return build_batch(
        job.load_record(), "in_progress", node=node, model=model, metadata=metadata, checkpoint=total,
        validation=validation, chunk_size=chunk_size, shards=[_public(r) for r in rows],
    )  # fmt: skip


def shard_rows(job: JobDir, now: float | None = None) -> list[dict[str, Any]] | None:
    """One row per shard (None for a job that is not sharded): owner, progress, outcome."""
    plan = load_plan(job)
    if plan is None:
        return None
    now = time.time() if now is None else now
    rows = []
    for shard in shard_dirs(job, plan):
        state, lease, ckpt = shard_state(shard)
        if state.finished:
            status = state.outcome
        elif lease is None:
            status = "waiting"
        else:
            status = "running"
        rows.append({
            **state.public(plan.count, status), "lease_age_seconds": round(now - lease.renewed_at, 1) if lease else None,
            "succeeded": ckpt.succeeded, "failed": ckpt.failed, "prompt_tokens": ckpt.prompt_tokens,
            "completion_tokens": ckpt.completion_tokens, "chunks": ckpt.chunks,
        })  # fmt: skip
    return rows


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A row as batch.json's `spoold.job.shards.plan` lists it: ShardState.public's keys, without the run details."""
    return {k: row[k] for k in ("index", "of", "lines", "status", "node", "done")}
