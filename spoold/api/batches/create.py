"""POST /v1/batches as a plain function: check the request against its input file, then make the inbox job.

The order on disk: the batch record (owner, create-exclusive, locked), the input
(temp name, fsync, rename), the sidecar last (the commit marker daemons wait for).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from spoold.api.area import ApiArea
from spoold.api.batches import records
from spoold.api.batches.records import BatchRecord
from spoold.api.batches.scan import MAX_SHOWN, Summary, cached_summary
from spoold.api.batches.spoolview import job_exists, queued_requests
from spoold.api.errors import ApiError, bad_request, over_queue_limit
from spoold.api.files.store import content_path, get_upload
from spoold.api.ids import new_batch_id
from spoold.api.keys import ApiKey
from spoold.engine.base import URL_KINDS
from spoold.errors import SidecarError, describe_validation_error
from spoold.fsutil import atomic_write_text, fsync_dir
from spoold.job.sidecar import parse_sidecar
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX

SIDECAR_KEYS = ("model", "sampling", "priority", "handlers", "shards", "max_error_ratio", "chunk_size")
"""What the create body's `spoold` object may carry (SPEC section 11): the sidecar's keys but metadata."""
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
"""OpenAI's rules for metadata."""
COMPLETION_WINDOWS = ("24h",)


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the SDK may send fields newer than this server (output_expires_after)

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    spoold: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _openai_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs, got {len(value)}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY or len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"keys are at most {MAX_METADATA_KEY} characters and values at most {MAX_METADATA_VALUE}")
        return value


@dataclass(frozen=True)
class Settings:
    """What a create checks against, from the config (plain values, so tests need no config file)."""

    model_names: frozenset[str]
    handler_names: frozenset[str]
    max_line_bytes: int
    max_queued_requests_per_key: int | None = None


def parse_create(body: Any) -> CreateBatch:
    try:
        return CreateBatch.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise bad_request(
            f"Invalid request: {describe_validation_error(exc)}.", param=".".join(str(p) for p in first["loc"]) or None
        ) from None


def create_batch(area: ApiArea, key: ApiKey, request: CreateBatch, settings: Settings, idempotency_key: str | None = None) -> BatchRecord:
    """Make the batch (or, for a repeated Idempotency-Key, finish and return the first one). Returns its record."""
    batch_id = new_batch_id(key.name, idempotency_key)
    first = records.read(area, batch_id)
    if first is not None:  # a retry: the first answer, whatever this body says
        return _ensure_job(area, first)
    record = _checked_record(area, key, request, settings, batch_id)
    with records.creating(area, record) as (held, wrote):
        if wrote or not job_exists(area.spool, held.id):
            _make_job(area, held)
    return held


def _checked_record(area: ApiArea, key: ApiKey, request: CreateBatch, settings: Settings, batch_id: str) -> BatchRecord:
    upload = get_upload(area, key, request.input_file_id)
    if request.completion_window not in COMPLETION_WINDOWS:
        raise bad_request(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}.", param="completion_window")
    if request.endpoint not in URL_KINDS:
        raise bad_request(f"Invalid endpoint {request.endpoint!r}: one of {', '.join(URL_KINDS)}.", param="endpoint")
    summary = cached_summary(content_path(area, upload), area.files / upload.id / "summary.json", settings.max_line_bytes)
    check_lines(summary, request.endpoint)
    extra = dict(request.spoold or {})
    unknown = sorted(set(extra) - set(SIDECAR_KEYS))
    if unknown:
        raise bad_request(f"Unknown spoold setting(s) {', '.join(unknown)}; known: {', '.join(SIDECAR_KEYS)}.", param="spoold")
    extra["model"] = choose_model(extra.get("model"), summary, settings.model_names)
    if extra["model"] is None:
        del extra["model"]
    extra["priority"] = capped_priority(extra.get("priority", 0), key)
    metadata = request.metadata or {}
    text = yaml.safe_dump({**extra, "metadata": metadata}, sort_keys=False)
    try:
        parse_sidecar(text, set(settings.handler_names))
    except SidecarError as exc:
        raise bad_request(f"Invalid spoold settings: {str(exc).removeprefix('invalid sidecar: ')}.", param="spoold") from None
    limit = settings.max_queued_requests_per_key
    if limit is not None:
        queued = queued_requests(area, key.name)
        if queued + summary.lines > limit:
            raise over_queue_limit(
                f"Key {key.name} has {queued} requests queued in unfinished batches; this batch's {summary.lines} would pass the "
                f"limit of {limit} (api.max_queued_requests_per_key). Retry once some of them have finished."
            )
    return BatchRecord(
        id=batch_id, owner=key.name, input_file_id=upload.id, endpoint=request.endpoint, completion_window=request.completion_window,
        metadata=metadata, created_at=int(time.time()), lines=summary.lines, model=extra.get("model"), sidecar=text,
    )  # fmt: skip


def check_lines(summary: Summary, endpoint: str) -> None:
    """Every line's url is the batch's endpoint, and some line can run at all (pure)."""
    if summary.lines == 0:
        raise bad_request("The input file has no requests.", param="input_file_id")
    if summary.bad == summary.lines:
        raise bad_request("No line of the input file is a JSON request object.", param="input_file_id")
    wrong = sorted((line, url) for url, line in summary.urls.items() if url != endpoint)
    if wrong:
        shown = "; ".join(f"line {line}: {url}" for line, url in wrong[:MAX_SHOWN])
        raise bad_request(
            f"The endpoint is {endpoint} but lines ask for other urls ({shown}): every line's url must match it.", param="endpoint"
        )


def choose_model(requested: object, summary: Summary, names: frozenset[str]) -> str | None:
    """spoold.model, else the lines' one body.model, else None (the daemon's engine.default_model) (pure)."""
    if requested is not None:
        if not isinstance(requested, str):
            raise bad_request("spoold.model must be a string.", param="spoold.model")
        return check_model_name(requested, names, "spoold.model")
    if len(summary.models) > 1:
        shown = ", ".join(f"{m} (line {n})" for m, n in sorted(summary.models.items(), key=lambda kv: kv[1])[:MAX_SHOWN])
        raise bad_request(
            f"The lines name {len(summary.models)} models ({shown}): one model per batch. Split the file, or set the model "
            "with extra_body={'spoold': {'model': NAME}}.",
            param="input_file_id",
        )
    if summary.models:
        return check_model_name(next(iter(summary.models)), names, "body.model")
    return None


def check_model_name(name: str, names: frozenset[str], where: str) -> str:
    if name in names:
        return name
    if "/" in name or "\\" in name or name.startswith((".", "~")):
        raise bad_request(
            f"{where} {name!r} looks like a path: through the API a model is a profile or adapter name (GET /v1/models).", param="model"
        )
    raise bad_request(
        f"Unknown model {name!r} ({where}): GET /v1/models lists the ones this server has.", param="model", code="model_not_found"
    )


def capped_priority(asked: object, key: ApiKey) -> object:
    """A key's max_priority caps what its batches may ask for: asking above it is a 400; the default is lowered to it."""
    if key.max_priority is None or not isinstance(asked, int) or isinstance(asked, bool):
        return asked  # not an int: parse_sidecar says so
    if asked > key.max_priority:
        if asked == 0:
            return key.max_priority
        raise bad_request(f"Priority {asked} is above this key's max_priority of {key.max_priority}.", param="spoold.priority")
    return asked


def _ensure_job(area: ApiArea, record: BatchRecord) -> BatchRecord:
    """A record whose creator may have died before the job was in the inbox: finish it (under its lock)."""
    with records.creating(area, record) as (held, _):
        if not job_exists(area.spool, held.id):
            _make_job(area, held)
    return held


def _make_job(area: ApiArea, record: BatchRecord) -> None:
    inbox = area.spool.inbox
    source = area.files / record.input_file_id / "content"
    target = inbox / f"{record.id}{INPUT_SUFFIX}"
    if not target.exists():
        tmp = inbox / f".{record.id}{INPUT_SUFFIX}.{uuid.uuid4().hex[:8]}.part"
        try:
            _copy_durably(source, tmp)
            os.rename(tmp, target)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise ApiError(
                400, f"The input file {record.input_file_id} was deleted before the batch was made.", param="input_file_id"
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(inbox)
    atomic_write_text(inbox / f"{record.id}{SIDECAR_SUFFIX}", record.sidecar)


def _copy_durably(source: Path, target: Path) -> None:
    """A copy, not a link: the daemon reads only single-name files, and a deleted upload must not take the job's input."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
