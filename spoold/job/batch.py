"""batch.json: the job's status object, an OpenAI batch object (SPEC section 5).

It parses with the OpenAI SDK's `openai.types.Batch` in every status, live
(processing/) and final (done/, failed/). spoold's own facts live under the
`spoold` key, which the SDK keeps as an extra field.
"""

from __future__ import annotations

import math
import time
from typing import Any

from spoold.job.checkpoint import Checkpoint
from spoold.job.validate import ValidationSummary
from spoold.spool.jobdir import JobRecord

FINAL_STATUSES = ("completed", "failed", "cancelled")
_FINAL_FIELD = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}
COMPLETION_WINDOW = "24h"
DEFAULT_ENDPOINT = "/v1/chat/completions"
"""The endpoint shown before the validating pass has found a valid request (or when none is valid)."""
INPUT_FILE, OUTPUT_FILE, ERROR_FILE = "input.jsonl", "output.jsonl", "errors.jsonl"


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
    now: float | None = None,
    shards: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The batch object for `record` in `status` (pure but for the clock, which `now` replaces)."""
    ckpt = checkpoint or Checkpoint()
    total = validation.lines if validation else 0
    now = time.time() if now is None else now
    endpoint = (validation.endpoint if validation else None) or DEFAULT_ENDPOINT
    batch: dict[str, Any] = {
        "id": record.id,
        "object": "batch",
        "endpoint": endpoint,
        "completion_window": COMPLETION_WINDOW,
        "input_file_id": INPUT_FILE,
        "output_file_id": OUTPUT_FILE,
        "error_file_id": ERROR_FILE,
        "status": status,
        "created_at": int(record.created_at),
        "in_progress_at": _int(record.in_progress_at),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": ckpt.succeeded, "failed": ckpt.failed},
        "model": model,
        "usage": usage(ckpt.prompt_tokens, ckpt.completion_tokens),
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
    if shards:
        batch["spoold"]["shards"] = shards
    return batch


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The batch object's `usage` (OpenAI's shape). spoold counts no cached or reasoning tokens apart: both 0."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def chunk_count(total: int, chunk_size: int | None) -> int:
    """How many checkpoints a job of `total` lines takes (pure)."""
    return math.ceil(total / chunk_size) if chunk_size and total else 0


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None
