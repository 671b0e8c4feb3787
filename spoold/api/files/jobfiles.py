"""A job's own files as Files API objects: `file-input-NAME`, `file-output-NAME`, `file-errors-NAME`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spoold.api.area import ApiArea
from spoold.api.batches import records
from spoold.api.batches.spoolview import FINAL, locate
from spoold.api.errors import not_found
from spoold.api.ids import JOB_FILES, parse_job_file_id
from spoold.api.keys import ApiKey
from spoold.spool.states import JobState


def job_file(area: ApiArea, key: ApiKey, file_id: str) -> tuple[Path, dict[str, Any]]:
    """(path, FileObject) of a job's file; output and errors exist once the job has finished."""
    parsed = parse_job_file_id(file_id)
    if parsed is None:
        raise not_found("file", file_id)
    kind, name = parsed
    record = records.read(area, name)
    if not key.operator and (record is None or record.owner != key.name):
        raise not_found("file", file_id)
    found = locate(area.spool, name)
    if found is None:
        raise not_found("file", file_id)
    state, folder = found
    if state is JobState.INBOX:
        path = folder if kind == "input" else None
    elif kind == "input" or state in FINAL:
        path = folder / JOB_FILES[kind]
    else:
        path = None
    try:
        st = os.stat(path) if path is not None else None
    except FileNotFoundError:
        st = None
    if path is None or st is None:
        raise not_found("file", file_id)
    purpose = "batch" if kind == "input" else "batch_output"
    obj = {
        "id": file_id, "object": "file", "bytes": st.st_size, "created_at": int(st.st_mtime), "filename": JOB_FILES[kind],
        "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None,
    }  # fmt: skip
    return path, obj
