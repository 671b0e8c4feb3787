"""GET /v1/batches[/{id}] and cancel as plain functions: a job's batch.json, with ids the Files API serves."""

from __future__ import annotations

import os
from typing import Any

from spoold.api.area import ApiArea
from spoold.api.batches import records
from spoold.api.batches.records import BatchRecord
from spoold.api.batches.spoolview import FINAL, locate
from spoold.api.errors import bad_request, not_found
from spoold.api.ids import is_job_name, job_file_id
from spoold.api.keys import ApiKey
from spoold.control.cancel import cancel
from spoold.errors import NoSuchJob, SidecarError, SpooldError
from spoold.fsutil import mtime_or_now, read_json
from spoold.job.batch import COMPLETION_WINDOW, DEFAULT_ENDPOINT, usage
from spoold.job.sidecar import parse_sidecar
from spoold.spool.jobdir import JobDir
from spoold.spool.names import SIDECAR_SUFFIX
from spoold.spool.states import JobState

MAX_PAGE = 100


def visible(area: ApiArea, key: ApiKey, name: str) -> BatchRecord | None | bool:
    """The batch's record if `key` may see it (None: a job with no record, which only operators see); False if not."""
    if not is_job_name(name):
        return False
    record = records.read(area, name)
    if key.operator:
        return record
    return record if record is not None and record.owner == key.name else False


def retrieve(area: ApiArea, key: ApiKey, batch_id: str) -> dict[str, Any]:
    record = visible(area, key, batch_id)
    if record is False:
        raise not_found("batch", batch_id)
    batch = batch_object(area, batch_id, record if isinstance(record, records.BatchRecord) else None)
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


def batch_object(area: ApiArea, name: str, record: BatchRecord | None) -> dict[str, Any] | None:
    """openai.types.Batch for job `name`; None if there is no such job (or its create never finished)."""
    found = locate(area.spool, name)
    if found is None:
        return None
    state, path = found
    batch: dict[str, Any] = {}
    if state is not JobState.INBOX:
        try:
            batch = read_json(JobDir(path).batch)
        except (OSError, ValueError):
            batch = {}  # claimed a moment ago: no batch.json yet
    if not batch:
        if state is JobState.INBOX and record is not None and not (area.spool.inbox / f"{name}{SIDECAR_SUFFIX}").exists():
            return None  # its create has not committed (or died half way): not a batch yet
        batch = _waiting(area, name, path, record)
    batch["id"] = name
    if record is not None:
        batch.update(endpoint=record.endpoint, completion_window=record.completion_window, input_file_id=record.input_file_id)
        batch["created_at"] = record.created_at
    else:
        batch["input_file_id"] = job_file_id("input", name)
    final = state in FINAL
    batch["output_file_id"] = job_file_id("output", name) if final and _nonempty(path / "output.jsonl") else None
    batch["error_file_id"] = job_file_id("errors", name) if final and _nonempty(path / "errors.jsonl") else None
    if state is JobState.PROCESSING and batch.get("status") in ("completed", "failed", "cancelled"):
        # ended, but not yet moved to done/ or failed/ (its output files are not served yet): OpenAI's own
        # word for "completed, results being prepared"; a client polling for a final status waits a moment more
        batch["status"] = "cancelling" if batch["status"] == "cancelled" else "finalizing"
    elif (
        state is JobState.PROCESSING and JobDir(path).cancel_requested() and batch.get("status") not in ("cancelled", "completed", "failed")
    ):
        batch["status"] = "cancelling"
        batch["cancelling_at"] = int(mtime_or_now(JobDir(path).cancel_marker))
    return batch


def _waiting(area: ApiArea, name: str, path: Any, record: BatchRecord | None) -> dict[str, Any]:
    """The batch object of a job no daemon has claimed yet (it has no batch.json)."""
    if record is not None:
        created, total, model, metadata, endpoint = record.created_at, record.lines, record.model, record.metadata, record.endpoint
    else:
        created, total, endpoint = int(mtime_or_now(path)), 0, DEFAULT_ENDPOINT
        try:
            sidecar = parse_sidecar((area.spool.inbox / f"{name}{SIDECAR_SUFFIX}").read_bytes())
            model, metadata = sidecar.model, sidecar.metadata
        except (OSError, SidecarError):
            model, metadata = None, {}
    return {
        "id": name, "object": "batch", "endpoint": endpoint, "completion_window": COMPLETION_WINDOW, "status": "validating",
        "created_at": created, "in_progress_at": None, "finalizing_at": None, "completed_at": None, "failed_at": None,
        "cancelled_at": None, "request_counts": {"total": total, "completed": 0, "failed": 0}, "model": model,
        "usage": usage(0, 0), "metadata": metadata, "errors": None, "spoold": {"job": name, "state": "inbox"},
    }  # fmt: skip


def _nonempty(path: Any) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def list_batches(area: ApiArea, key: ApiKey, limit: int = 20, after: str | None = None) -> dict[str, Any]:
    """A page of batches, newest first (API batches by creation; jobs dropped by hand, for operators, by their file's mtime)."""
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    entries: list[tuple[int, str, records.BatchRecord | None]] = [
        (r.created_at, r.id, r) for r in records.all_records(area) if key.operator or r.owner == key.name
    ]
    if key.operator:
        known = {name for _, name, _ in entries}
        entries += [(int(t), n, None) for n, t in _hand_made_jobs(area, known)]
    entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
    if after is not None:
        position = next((i for i, e in enumerate(entries) if e[1] == after), None)
        entries = entries[position + 1 :] if position is not None else []
    data: list[dict[str, Any]] = []
    more = False
    for _, name, record in entries:
        batch = batch_object(area, name, record)
        if batch is None:
            continue
        if len(data) == limit:
            more = True
            break
        data.append(batch)
    return page(data, more)


def _hand_made_jobs(area: ApiArea, known: set[str]) -> list[tuple[str, float]]:
    """(name, mtime) of every job in the spool without an API record."""
    spool, out = area.spool, []
    for state in JobState:
        try:
            names = os.listdir(spool.dir(state))
        except FileNotFoundError:
            continue
        for entry in names:
            name = entry[: -len(".jsonl")] if state is JobState.INBOX and entry.endswith(".jsonl") else entry
            if (state is JobState.INBOX and name == entry) or name in known or not is_job_name(name):
                continue
            known.add(name)
            out.append((name, mtime_or_now(spool.dir(state) / entry)))
    return out


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def cancel_batch(area: ApiArea, key: ApiKey, batch_id: str, node: str, handlers: list[Any]) -> dict[str, Any]:
    """`spoold cancel` on the batch's job; a finished batch is a 400, as OpenAI answers."""
    batch = retrieve(area, key, batch_id)
    if batch["status"] in ("completed", "failed", "cancelled", "cancelling"):
        if batch["status"] in ("cancelled", "cancelling"):
            return batch
        raise bad_request(f"Cannot cancel a batch with status {batch['status']!r}.", param="id")
    for _ in range(3):  # a daemon may claim it between our look and our claim: then ask that daemon
        try:
            cancel(area.spool, batch_id, node, handlers)
            break
        except NoSuchJob:
            raise not_found("batch", batch_id) from None
        except SpooldError as exc:
            if "just claimed" not in str(exc):
                raise bad_request(f"Cannot cancel: {exc}.", param="id") from None
    return retrieve(area, key, batch_id)
