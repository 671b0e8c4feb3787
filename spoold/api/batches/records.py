"""Batch records (`SPOOL/.spoold/api/batches/<id>.json`): who owns a batch and what its create asked for.

A record is written once, before its job exists, by create-exclusive link(2) of a finished
temp file, so two API processes racing on one Idempotency-Key make one record. Its creator
holds flock() on it until the job is in the inbox: a later request that gets the lock and
finds no job knows the creator died and finishes the job itself (crash recovery needs no
timeouts). Records never change, so each process caches the ones it has read.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel

from spoold.api.area import ApiArea
from spoold.api.ids import BATCH_ID
from spoold.fsutil import FILE_MODE, fsync_dir, read_json, write_all


class BatchRecord(BaseModel):
    id: str
    owner: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]
    created_at: int
    lines: int
    model: str | None
    sidecar: str
    """The sidecar YAML the job gets (kept so a recovering process writes exactly the same one)."""


_cache: dict[str, BatchRecord] = {}
_cache_lock = threading.Lock()
_creating: dict[str, threading.Lock] = {}
"""flock() on NFS is a POSIX lock, which does not exclude a second request in the same process: this does."""


def read(area: ApiArea, batch_id: str) -> BatchRecord | None:
    if not BATCH_ID.match(batch_id):
        return None
    with _cache_lock:
        known = _cache.get(batch_id)
    if known is not None:
        return known
    try:
        record = BatchRecord.model_validate(read_json(area.batches / f"{batch_id}.json"))
    except FileNotFoundError:
        return None
    with _cache_lock:
        _cache[batch_id] = record
    return record


def all_records(area: ApiArea) -> list[BatchRecord]:
    try:
        names = os.listdir(area.batches)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".json") and (record := read(area, name[: -len(".json")])) is not None:
            out.append(record)
    return out


@contextmanager
def creating(area: ApiArea, record: BatchRecord) -> Iterator[tuple[BatchRecord, bool]]:
    """Hold the right to make `record`'s job. Yields (the record in force, whether this call wrote it).

    If the record exists already (a retried Idempotency-Key), waits for whoever holds its lock
    and yields the existing record: the caller then checks whether the job exists."""
    with _cache_lock:
        local = _creating.setdefault(record.id, threading.Lock())
    with local:
        final = area.batches / f"{record.id}.json"
        tmp = area.batches / f".rec-{record.id}-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        wrote = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # taken before the name is visible: nobody can see it unlocked
            write_all(fd, (record.model_dump_json() + "\n").encode())
            os.fsync(fd)
            try:
                os.link(tmp, final)
                wrote = True
            except FileExistsError:
                pass
            os.unlink(tmp)
            fsync_dir(area.batches)
            if wrote:
                yield record, True
                return
        finally:
            os.close(fd)
        existing = _locked_existing(area, record.id)
        with existing as found:
            yield found, False


@contextmanager
def _locked_existing(area: ApiArea, batch_id: str) -> Iterator[BatchRecord]:
    fd = os.open(area.batches / f"{batch_id}.json", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while its creator (alive) is still making the job
        found = read(area, batch_id)
        assert found is not None
        yield found
    finally:
        os.close(fd)
