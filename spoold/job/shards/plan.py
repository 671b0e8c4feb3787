"""Shards: one big job split into line-aligned byte ranges that several daemons work on at once.

The daemon that claims the job cuts it once, after its validating pass: it
writes `.spoold/shards.json` (the plan) atomically, and from then on each
shard is a unit of work of its own, with its state in `.spoold/shards/<k>/`:
its own lease (lease.py), checkpoints and result segments (segments.py) and
run record. Any daemon on the spool claims a free shard by creating its
first lease, and takes one over when that lease goes stale, like a job.
The daemon that ends the last shard merges them (shardend.py).

Line numbers stay those of the whole input, so `line-N` custom_ids, error
lines and duplicate custom_ids across shards mean what they mean unsharded.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel

from spoold.fsutil import atomic_write_json, fsync_dir, read_json
from spoold.job.checkpoint import Checkpoint, load_checkpoint
from spoold.spool import lease as leases
from spoold.spool.jobdir import STATE_DIR, JobDir, JobRecord

PLAN_FILE = "shards.json"
SHARDS_DIR = "shards"
FAILED_MARKER = "shard-failed"
"""Written by a shard that failed for good: the job fails, so the other shards stop early."""
MAX_SHARDS = 64
SCAN_BLOCK = 8 << 20


class Span(BaseModel):
    index: int
    first_line: int
    start: int
    """Byte offset of the shard's first line."""
    end: int
    """Byte offset just past its last line."""
    lines: int
    """Lines in the range, blank ones included."""


class ShardPlan(BaseModel):
    spans: list[Span]

    @property
    def count(self) -> int:
        return len(self.spans)


def shard_count(asked: int | None, lines: int, shard_min_lines: int | None) -> int:
    """How many shards a job of `lines` requests gets (pure): the sidecar's `shards`, else one per
    `shard_min_lines` lines once the job is larger than that, at most MAX_SHARDS."""
    if asked is not None:
        wanted = asked
    elif shard_min_lines and lines > shard_min_lines:
        wanted = lines // shard_min_lines
    else:
        wanted = 1
    return max(1, min(wanted, MAX_SHARDS, lines))


def cut_spans(path: Path, count: int) -> list[Span]:
    """Split the file at `path` into up to `count` ranges of about equal bytes, each starting at a line start.

    One streaming pass (newlines counted in blocks); ranges that would be empty are left out."""
    size = os.path.getsize(path)
    targets = [size * k // count for k in range(1, count)]
    bounds = [(0, 0)]  # (byte offset, lines before it)
    with open(path, "rb", buffering=0) as fh:
        pos, newlines, ti = 0, 0, 0
        while True:
            block = fh.read(SCAN_BLOCK)
            if not block:
                break
            while ti < len(targets):
                at = max(targets[ti], bounds[-1][0] + 1) - 1 - pos  # the line holding byte target-1 ends the range
                if at >= len(block):
                    break
                nl = block.find(b"\n", max(at, 0))
                if nl < 0:
                    break
                bounds.append((pos + nl + 1, newlines + block.count(b"\n", 0, nl + 1)))
                ti += 1
            newlines += block.count(b"\n")
            pos += len(block)
    total_lines = newlines + (1 if size and not _ends_with_newline(path, size) else 0)
    bounds = [b for b in bounds if b[0] < size] + [(size, total_lines)]
    spans: list[Span] = []
    for (start, before), (end, after) in zip(bounds, bounds[1:], strict=False):
        if end > start:
            spans.append(Span(index=len(spans), first_line=before + 1, start=start, end=end, lines=after - before))
    return spans


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def plan_path(job: JobDir) -> Path:
    return job.path / STATE_DIR / PLAN_FILE


def load_plan(job: JobDir) -> ShardPlan | None:
    try:
        return ShardPlan.model_validate(read_json(plan_path(job)))
    except FileNotFoundError:
        return None


def save_plan(job: JobDir, plan: ShardPlan) -> None:
    """Create every shard's state folder, then commit the plan: from then on the job runs as shards."""
    root = job.path / STATE_DIR / SHARDS_DIR
    root.mkdir(exist_ok=True)
    for span in plan.spans:
        (root / str(span.index)).mkdir(exist_ok=True)
        fsync_dir(root / str(span.index))
    fsync_dir(root)
    fsync_dir(root.parent)
    atomic_write_json(plan_path(job), plan.model_dump())


class ShardDir(JobDir):
    """One shard of a job: the job's input, sidecar and batch.json; a state folder of its own."""

    def __init__(self, path: Path, span: Span, count: int) -> None:
        super().__init__(path)
        self.span, self.count = span, count

    @property
    def job_name(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return f"{self.path.name}#{self.span.index + 1}"

    state = cached_property(lambda self: self.path / STATE_DIR / SHARDS_DIR / str(self.span.index))
    validation = cached_property(lambda self: self.path / STATE_DIR / "validation.json")
    cancel_marker = cached_property(lambda self: self.path / STATE_DIR / "cancel")
    failed_marker = cached_property(lambda self: self.path / STATE_DIR / FAILED_MARKER)

    def cancel_requested(self) -> bool:
        """The job is cancelled, or another shard failed it: this shard stops."""
        return self.cancel_marker.exists() or self.failed_marker.exists()

    def initial_checkpoint(self) -> Checkpoint:
        return Checkpoint(next_line=self.span.first_line, next_offset=self.span.start)

    def load_or_new_record(self, job_record: JobRecord) -> JobRecord:
        if self.record_path.exists():
            return self.load_record()
        return JobRecord.new(
            name=self.name, original_name=job_record.original_name, node=job_record.claimed_by, created_at=job_record.created_at
        )

    def __repr__(self) -> str:
        return f"ShardDir({str(self.path)!r}, {self.span.index})"


def shard_dirs(job: JobDir, plan: ShardPlan) -> list[ShardDir]:
    return [ShardDir(job.path, span, plan.count) for span in plan.spans]


class ShardState(BaseModel):
    """What the disk says of one shard, for mergers, finders and `spoold status`."""

    index: int
    lines: int
    owner: str | None = None
    gen: int = 0
    renewed_at: float = 0.0
    outcome: str | None = None
    reason: str | None = None
    records: int = 0

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def public(self, count: int, status: str | None = None) -> dict:
        """The shard as batch.json's `spoold.job.shards.plan` and `spoold status` show it (numbered from 1)."""
        return {"index": self.index + 1, "of": count, "lines": self.lines, "status": status or self.outcome or "running",
                "node": self.owner, "done": self.records}  # fmt: skip


def shard_state(shard: ShardDir) -> tuple[ShardState, leases.Lease | None, Checkpoint]:
    lease = leases.current(shard)
    ckpt = load_checkpoint(shard.state, shard.initial_checkpoint())
    # an outcome counts only if written under the shard's current lease: a frozen former owner
    # that wakes cannot declare a shard finished that its new owner is still running
    outcome = ckpt.outcome if lease is not None and ckpt.gen == lease.gen else None
    state = ShardState(
        index=shard.span.index, lines=shard.span.lines, owner=lease.node if lease else None, gen=lease.gen if lease else 0,
        renewed_at=lease.renewed_at if lease else 0.0, outcome=outcome, reason=ckpt.reason if outcome else None, records=ckpt.records,
    )  # fmt: skip
    return state, lease, ckpt
