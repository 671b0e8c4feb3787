"""batch.json is an OpenAI batch object: it parses with the SDK's `openai.types.Batch` in every status (SPEC section 5)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from openai.types import Batch

from spoold.job.batch import build_batch
from spoold.job.checkpoint import Checkpoint
from spoold.job.validate import ValidationSummary
from spoold.spool.jobdir import JobRecord

from spoold_helpers import LatestCheckpoint, SpooldProcess, chat_line, drop_job, wait_for

ALL_STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled"]


def _record() -> JobRecord:
    record = JobRecord.new("reviews", "reviews", "node-a", created_at=1_700_000_000.7)
    record.in_progress_at = 1_700_000_010.5
    record.finished_at = 1_700_000_070.2
    record.run_seconds = 60.0
    return record


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_every_status_parses_with_the_sdk(status: str) -> None:
    ckpt = Checkpoint(succeeded=7, failed=2, prompt_tokens=120, completion_tokens=45, chunks=2)
    validation = ValidationSummary(lines=9, valid=8, invalid=1, endpoint="/v1/completions")
    errors = [{"code": "job_failed", "message": "too many bad lines", "line": None}] if status == "failed" else None
    raw = build_batch(
        _record(), status, node="node-a", model="tiny-random", metadata={"project": "churn"},
        checkpoint=ckpt, validation=validation, chunk_size=5, errors=errors, now=1_700_000_080.0,
    )  # fmt: skip
    batch = Batch.model_validate(json.loads(json.dumps(raw)))
    assert batch.status == status and batch.object == "batch"
    assert batch.endpoint == "/v1/completions" and batch.completion_window == "24h"
    assert (batch.input_file_id, batch.output_file_id, batch.error_file_id) == ("input.jsonl", "output.jsonl", "errors.jsonl")
    assert batch.created_at == 1_700_000_000 and batch.in_progress_at == 1_700_000_010
    assert batch.request_counts is not None and batch.request_counts.model_dump() == {"total": 9, "completed": 7, "failed": 2}
    assert batch.usage is not None
    assert batch.usage.input_tokens == 120 and batch.usage.output_tokens == 45 and batch.usage.total_tokens == 165
    assert batch.usage.input_tokens_details.cached_tokens == 0 and batch.usage.output_tokens_details.reasoning_tokens == 0
    assert batch.metadata == {"project": "churn"} and batch.model == "tiny-random"
    final = {"completed": batch.completed_at, "failed": batch.failed_at, "cancelled": batch.cancelled_at}
    for name, value in final.items():
        assert value == (1_700_000_070 if name == status else None)
    assert batch.finalizing_at == (1_700_000_070 if status in final else None)
    if status == "failed":
        assert batch.errors is not None and batch.errors.object == "list"
        assert batch.errors.data is not None and batch.errors.data[0].message == "too many bad lines"
    else:
        assert batch.errors is None
    extra = batch.model_extra or {}
    assert extra["spoold"]["node"] == "node-a" and extra["spoold"]["chunks"] == {"done": 2, "total": 2, "size": 5}


def test_endpoint_before_validation_is_the_chat_endpoint() -> None:
    raw = build_batch(_record(), "validating", node="n", model=None, metadata={})
    assert Batch.model_validate(raw).endpoint == "/v1/chat/completions"


def _watch_live(processing: Path, seen: dict[str, dict[str, Any]], stop: threading.Event) -> None:
    """Keep every distinct live batch.json status seen under processing/ (a reader racing the daemon)."""
    while not stop.is_set():
        for path in processing.glob("*/batch.json"):
            try:
                obj = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # renamed away between glob and read
            seen.setdefault(f"{path.parent.name}:{obj.get('status')}", obj)
        stop.wait(0.02)


@pytest.mark.slow
def test_daemon_batch_json_parses_live_and_final(tmp_path: Path) -> None:
    """Live (validating, in_progress) and final (completed, failed, cancelled) objects from the real daemon."""
    seen: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    with SpooldProcess(tmp_path, chunk_size=2, engine={"window": 4}) as d:
        watcher = threading.Thread(target=_watch_live, args=(d.spool / "processing", seen, stop), daemon=True)
        watcher.start()
        d.start(env={"SPOOLD_ECHO_DELAY": "0.2"})
        completions = [{"custom_id": f"p{i}", "url": "/v1/completions", "method": "POST", "body": {"prompt": f"w{i}"}} for i in range(6)]
        drop_job(d.inbox, "ok", completions, {"metadata": {"team": "a"}})
        ok = d.wait_finished("ok")
        drop_job(d.inbox, "bad", ["not json", '{"custom_id": 1}'], {})
        bad = d.wait_finished("bad")
        drop_job(d.inbox, "long", [chat_line(f"l{i}", "hello there") for i in range(400)], {"chunk_size": 1})
        wait_for(lambda: LatestCheckpoint(d.spool / "processing" / "long" / ".spoold").exists(), 30, what="long to run")
        d.cli("cancel", "long", check=True)
        long = d.wait_finished("long")
        stop.set()
        watcher.join()
        assert d.stop() == 0
    finals = {"ok": (ok, "completed"), "bad": (bad, "failed"), "long": (long, "cancelled")}
    for name, (job, status) in finals.items():
        batch = Batch.model_validate_json((job / "batch.json").read_text())
        assert batch.status == status, name
        assert batch.request_counts is not None and batch.usage is not None
    ok_batch = Batch.model_validate_json((ok / "batch.json").read_text())
    assert ok_batch.endpoint == "/v1/completions" and ok_batch.metadata == {"team": "a"}
    assert ok_batch.usage is not None and ok_batch.usage.output_tokens > 0
    bad_batch = Batch.model_validate_json((bad / "batch.json").read_text())
    assert bad_batch.errors is not None and bad_batch.errors.data and "no valid request" in (bad_batch.errors.data[0].message or "")
    live_statuses = {key.split(":")[1] for key in seen}
    assert "in_progress" in live_statuses, seen.keys()
    for key, obj in seen.items():
        assert Batch.model_validate(obj).status == key.split(":")[1]
