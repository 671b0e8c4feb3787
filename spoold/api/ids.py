"""Ids the API hands out, checked by strict patterns before any path is built from one (pure)."""

from __future__ import annotations

import hashlib
import re
import uuid

UPLOAD_ID = re.compile(r"^file-[0-9a-f]{32}$")
BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@-]{0,199}$")
"""Job names the API can address (a job dropped by hand with another name is only seen by `spoold status`)."""
JOB_FILES = {"input": "input.jsonl", "output": "output.jsonl", "errors": "errors.jsonl"}
"""Result files of a job, served as `file-<kind>-<job name>`."""


def new_upload_id(owner: str, idempotency_key: str | None) -> str:
    return "file-" + _hex(owner, "files", idempotency_key)


def new_batch_id(owner: str, idempotency_key: str | None) -> str:
    return "batch_" + _hex(owner, "batches", idempotency_key)


def _hex(owner: str, kind: str, idempotency_key: str | None) -> str:
    """Random, or with an Idempotency-Key derived from (key name, kind, key): a retry gets the same id,
    and the spool's create-exclusive names then make it one thing whichever process serves it."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{owner}\0{kind}\0{idempotency_key}".encode()).hexdigest()[:32]


def job_file_id(kind: str, job: str) -> str:
    return f"file-{kind}-{job}"


def parse_job_file_id(file_id: str) -> tuple[str, str] | None:
    """`file-output-NAME` -> ("output", NAME); None if it is not a job file's id (or not a safe one)."""
    for kind in JOB_FILES:
        prefix = f"file-{kind}-"
        if file_id.startswith(prefix) and is_job_name(file_id[len(prefix) :]):
            return kind, file_id[len(prefix) :]
    return None


def is_job_name(name: str) -> bool:
    return bool(JOB_NAME.match(name)) and ".." not in name
