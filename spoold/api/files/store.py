"""Uploads in the spool: create (streamed, temp folder + fsync + rename), look up, list, delete. No HTTP here."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

from spoold.api.area import ApiArea
from spoold.api.errors import ApiError, bad_request, not_found, too_large
from spoold.api.ids import UPLOAD_ID
from spoold.api.keys import ApiKey
from spoold.fsutil import FILE_MODE, atomic_write_json, fsync_dir, read_json

CONTENT, RECORD = "content", "file.json"
HEAD_BYTES = 1 << 20
"""The first MiB of an upload is kept to check that it is JSONL (its first line must be a JSON object)."""
WRITE_BUFFER = 1 << 20
"""Upload bytes are written in blocks of about this size, one worker-thread hop and one writev each (benchmarks/api.md)."""
IOV_BATCH = 512
"""Buffers per writev call (Linux's IOV_MAX is 1024)."""
WRITEBACK_AHEAD = 8 << 20
"""Every this many bytes, the kernel is asked to start writing them to disk (sync_file_range, Linux; not a sync:
it does not wait), so the disk works while the rest arrives and the one fsync before the rename has little left."""
PURPOSES = ("batch",)


class FileRecord(BaseModel):
    id: str
    owner: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    idempotent: bool = False
    deleted: bool = False

    def file_object(self) -> dict[str, Any]:
        """openai.types.FileObject."""
        return {
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed", "expires_at": None, "status_details": None,
        }  # fmt: skip


def visible_to(key: ApiKey, owner: str | None) -> bool:
    return key.operator or (owner is not None and owner == key.name)


class Upload:
    """One upload streamed into `files/.up-<id>-<rand>/content`; `commit` makes it visible by one rename."""

    def __init__(self, area: ApiArea, owner: str, file_id: str, limit: int, *, idempotent: bool = False) -> None:
        self.area, self.owner, self.file_id, self.limit, self.idempotent = area, owner, file_id, limit, idempotent
        self.folder = area.files / f".up-{file_id}-{uuid.uuid4().hex[:8]}"
        self.size = 0
        self.head = bytearray()
        self.over_limit = False
        self._fd: int | None = None
        self._written_back = 0

    def open(self) -> Upload:
        self.area.files.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir()
        self._fd = os.open(self.folder / CONTENT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        return self

    def write(self, *pieces: bytes) -> None:
        """Append pieces of the file (one writev, no join); past the limit nothing more is written (and commit refuses)."""
        total = sum(len(p) for p in pieces)
        if self.over_limit or not total:
            return
        if self.size + total > self.limit:
            self.over_limit = True
            return
        assert self._fd is not None
        for piece in pieces:
            if len(self.head) >= HEAD_BYTES:
                break
            self.head += piece[: HEAD_BYTES - len(self.head)]
        writev_all(self._fd, pieces)
        self.size += total
        if self.size - self._written_back >= WRITEBACK_AHEAD:
            start_writeback(self._fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def commit(self, filename: str, purpose: str | None) -> FileRecord:
        """Check, fsync, then rename into place. A rename that finds the id taken (a retried Idempotency-Key
        another request or process finished first) discards this copy and answers with the first one."""
        try:
            if self.over_limit:
                raise too_large(self.limit)
            if purpose is None:
                raise bad_request("Missing required parameter: 'purpose'.", param="purpose")
            if purpose not in PURPOSES:
                raise bad_request(f"Invalid purpose {purpose!r}: this server takes only purpose 'batch'.", param="purpose")
            problem = jsonl_problem(bytes(self.head), self.size)
            if problem:
                raise bad_request(f"The file is not JSONL: {problem}.", param="file", code="invalid_file_format")
            assert self._fd is not None
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            record = FileRecord(
                id=self.file_id, owner=self.owner, bytes=self.size, created_at=int(time.time()), filename=filename or "upload.jsonl",
                purpose=purpose, idempotent=self.idempotent,
            )  # fmt: skip
            atomic_write_json(self.folder / RECORD, record.model_dump(), sync_dir=False)
            fsync_dir(self.folder)
            final = self.area.files / self.file_id
            try:
                os.rename(self.folder, final)
            except OSError as exc:  # ENOTEMPTY / EEXIST: the id exists already
                if not final.is_dir():
                    raise ApiError(500, f"cannot store the upload: {exc.strerror or exc}", type="server_error") from None
                self.abort()
                return read_record(final)
            fsync_dir(self.area.files)
            return record
        except BaseException:
            self.abort()
            raise


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start (not wait for) the disk writes of a written range; a refusal (EPERM under a seccomp filter) only loses the head start."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def writev_all(fd: int, pieces: Sequence[bytes]) -> None:
    """os.writev of every piece, resumed after a short write, at most IOV_BATCH buffers a call."""
    views: list[bytes | memoryview] = [p for p in pieces if p]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + IOV_BATCH])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = memoryview(views[first])[written:]


def jsonl_problem(head: bytes, size: int) -> str | None:
    """Why a file whose first bytes are `head` is not JSONL, or None (pure). Only the first line is parsed:
    a bad line further on is that line's error when the job runs (SPEC section 4), not the whole file's."""
    if size == 0 or not head.strip():
        return "it is empty"
    text = head.lstrip()
    first, newline, _ = text.partition(b"\n")
    if not newline and len(head) < size:  # a first line longer than the head: it must at least open an object
        return None if first.startswith(b"{") else "its first line is not a JSON object"
    try:
        value = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        return "its first line is not JSON"
    return None if isinstance(value, dict) else "its first line is not a JSON object"


def existing(area: ApiArea, file_id: str) -> FileRecord | None:
    """A finished upload with this id, deleted ones included (an Idempotency-Key's first answer)."""
    folder = area.files / file_id
    try:
        return read_record(folder)
    except FileNotFoundError:
        return None


def read_record(folder: Path) -> FileRecord:
    return FileRecord.model_validate(read_json(folder / RECORD))


def get_upload(area: ApiArea, key: ApiKey, file_id: str) -> FileRecord:
    if not UPLOAD_ID.match(file_id):
        raise not_found("file", file_id)
    record = existing(area, file_id)
    if record is None or record.deleted or not visible_to(key, record.owner):
        raise not_found("file", file_id)
    return record


def content_path(area: ApiArea, record: FileRecord) -> Path:
    return area.files / record.id / CONTENT


def list_uploads(area: ApiArea, key: ApiKey) -> list[FileRecord]:
    """Every live upload this key may see (the caller sorts and pages)."""
    out = []
    try:
        names = os.listdir(area.files)
    except FileNotFoundError:
        return []
    for name in names:
        if not UPLOAD_ID.match(name):
            continue
        try:
            record = read_record(area.files / name)
        except (FileNotFoundError, ValueError):
            continue
        if not record.deleted and visible_to(key, record.owner):
            out.append(record)
    return out


def delete_upload(area: ApiArea, key: ApiKey, file_id: str) -> dict[str, Any]:
    """openai.types.FileDeleted. An upload made with an Idempotency-Key leaves a tombstone (its record, marked
    deleted), so a late retry of that key still gets the first answer instead of a new file; others go whole.
    A batch made from the file keeps its own copy of the input (in its job)."""
    record = get_upload(area, key, file_id)
    folder = area.files / file_id
    if record.idempotent:
        atomic_write_json(folder / RECORD, record.model_copy(update={"deleted": True}).model_dump())
        (folder / CONTENT).unlink(missing_ok=True)
        (folder / "summary.json").unlink(missing_ok=True)
    else:
        trash = area.files / f".up-deleted-{file_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            raise not_found("file", file_id) from None
        fsync_dir(area.files)
        shutil.rmtree(trash, ignore_errors=True)
    return {"id": file_id, "object": "file", "deleted": True}
