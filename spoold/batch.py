"""batch.json: the job's status object, shaped like the OpenAI batch object (SPEC section 5)."""

from __future__ import annotations

import math
import time
from typing import Any

from spoold.checkpoint import Checkpoint
from spoold.jobdir import JobRecord
from spoold.validate import ValidationSummary

FINAL_STATUSES = ("completed", "failed", "cancelled")
_FINAL_FIELD = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}


def build_batch(
    record: JobRecord,
    status: str,
    *,
    node: str,
    model: str | None,
    metadata: dict[str, str],
    checkpoint: Checkpoint | None = None,
    validation: ValidationSummary | None = None,
    chunk_size: int | None = None,
    errors: list[dict[str, Any]] | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    ckpt = checkpoint or Checkpoint()
    total = validation.lines if validation else 0
    now = time.time()
    batch: dict[str, Any] = {
        "id": record.id,
        "object": "batch",
        "input_file": "input.jsonl",
        "output_file": "output.jsonl",
        "error_file": "errors.jsonl",
        "status": status,
        "created_at": record.created_at,
        "in_progress_at": _int(record.in_progress_at),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": ckpt.succeeded, "failed": ckpt.failed},
        "model": model,
        "usage": {
            "prompt_tokens": ckpt.prompt_tokens,
            "completion_tokens": ckpt.completion_tokens,
            "total_tokens": ckpt.prompt_tokens + ckpt.completion_tokens,
        },
        "metadata": metadata,
        "errors": {"object": "list", "data": errors} if errors else None,
    }
    if status in _FINAL_FIELD:
        batch[_FINAL_FIELD[status]] = int(record.finished_at or now)
        batch["finalizing_at"] = int(record.finished_at or now)
    if rate is None and record.run_seconds > 0 and status in FINAL_STATUSES:
        rate = ckpt.records / record.run_seconds
    chunks_total = chunk_count(total, chunk_size)
    batch["spoold"] = {
        "node": node,
        "job": record.name,
        "original_name": record.original_name,
        "claimed_at": int(record.claimed_at),
        "claimed_by": record.claimed_by,
        "chunks": {"done": ckpt.chunks, "total": chunks_total, "size": chunk_size},
        "lines_done": ckpt.records,
        "durations": {
            "queued_seconds": round(record.claimed_at - record.created_at, 3),
            "running_seconds": round(record.run_seconds, 3),
        },
        "rate_per_second": round(rate, 2) if rate is not None else None,
        "attempts": {"failures": record.failures, "last_error": record.last_error},
        "updated_at": round(now, 3),
    }
    return batch


def chunk_count(total: int, chunk_size: int | None) -> int:
    """How many checkpoints a job of `total` lines takes (pure)."""
    return math.ceil(total / chunk_size) if chunk_size and total else 0


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None
