"""A multipart/form-data upload (RFC 7578) parsed as it arrives from Starlette's `request.stream()`: the file
part goes straight into its temp folder in the spool, never to /tmp and never whole in memory; the small
`purpose` field is kept. The parser is this module's own (python-multipart parses only the part headers):
it finds the delimiter with one memchr for CR per received chunk (a JSONL file has no CR; a CRLF file falls
back to bytes.find), hands whole received chunks on without copying them, and they are written with one
writev per WRITE_BUFFER in a worker thread, while the next block is received (benchmarks/api.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
from python_multipart.multipart import parse_options_header

from spoold.api.errors import ApiError, bad_request, too_large
from spoold.api.files.store import IOV_BATCH, WRITE_BUFFER, FileRecord, Upload

MAX_FIELD_BYTES = 4096
"""Form fields other than the file (purpose) are short; a longer one is a 400."""
MAX_HEADER_BYTES = 16384
"""A part's headers; more is a 400."""
DRAIN_BYTES = 1 << 30
"""After a refusal, up to this much of the rest of the body is read (and dropped) so the client sees the error
instead of a reset connection; a larger rest is cut off."""
CR_MISSES = 16
"""CRs in one chunk that start no delimiter before the scan hands the rest of the chunk to bytes.find."""

_PREAMBLE, _DATA, _AFTER, _HEADERS, _END = range(5)


def malformed(why: str) -> ApiError:
    return bad_request(f"Malformed multipart body: {why}.", param="file")


class _Parts:
    """What the parser found: the fields, the file's name, and the file's bytes not yet written."""

    def __init__(self) -> None:
        self.fields: dict[str, bytes] = {}
        self.filename: str | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._part = ""
        self._in_file = False

    def begin(self, headers: dict[str, bytes]) -> None:
        _, options = parse_options_header(headers.get("content-disposition"))
        self._part = options.get(b"name", b"").decode("utf-8", "replace")
        self._in_file = b"filename" in options
        if self._in_file:
            if self._part != "file":
                raise bad_request(f"Unexpected file field {self._part!r}: the upload goes in the field 'file'.", param=self._part)
            if self.filename is not None:
                raise bad_request("Only one file per upload.", param="file")
            self.filename = options[b"filename"].decode("utf-8", "replace").replace("/", "_")[-255:]
        else:
            self.fields.setdefault(self._part, b"")

    def data(self, piece: bytes) -> None:
        if self._in_file:
            self.pending.append(piece)
            self.pending_bytes += len(piece)
            return
        value = self.fields[self._part] + piece
        if len(value) > MAX_FIELD_BYTES:
            raise bad_request(f"Form field {self._part!r} is too long.", param=self._part)
        self.fields[self._part] = value

    def full(self) -> bool:
        return self.pending_bytes >= WRITE_BUFFER or len(self.pending) >= IOV_BATCH

    def take_pending(self) -> list[bytes]:
        pieces, self.pending, self.pending_bytes = self.pending, [], 0
        return pieces


class FormParser:
    """Feed it the body chunk by chunk; it calls `parts.begin` per part and `parts.data` with the part's bytes.
    Only a possible delimiter's start (under len(delimiter) bytes) or an unfinished header block is carried
    from one chunk to the next, so a chunk inside the file is handed on as the same object."""

    def __init__(self, boundary: bytes, parts: _Parts) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.parts = parts
        self.state = _PREAMBLE
        self._carry = b"\r\n"  # the body opens with the delimiter less its CRLF
        self._preamble = 0

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        pos, size = 0, len(data)
        while pos < size and self.state != _END:
            if self.state in (_PREAMBLE, _DATA):
                found, keep = self._scan(data, pos)
                end = found if found >= 0 else keep
                if self.state == _DATA and end > pos:
                    self.parts.data(data[pos:end])  # the whole chunk is the same object, not a copy
                elif self.state == _PREAMBLE:
                    self._preamble += end - pos
                    if self._preamble > MAX_HEADER_BYTES:
                        raise malformed("no boundary where the body starts")
                if found < 0:
                    self._carry = data[keep:]
                    return
                pos, self.state = found + len(self.delimiter), _AFTER
            elif self.state == _AFTER:
                if size - pos < 2:
                    self._carry = data[pos:]
                    return
                two = data[pos : pos + 2]
                if two == b"--":
                    self.state = _END
                elif two == b"\r\n":
                    self.state = _HEADERS  # the CRLF stays: the header block is searched from it
                else:
                    raise malformed("a boundary is followed by neither CRLF nor '--'")
            else:
                end = data.find(b"\r\n\r\n", pos)
                if (end if end >= 0 else size) - pos > MAX_HEADER_BYTES:
                    raise malformed("a part's headers are too long")
                if end < 0:
                    self._carry = data[pos:]
                    return
                self.parts.begin(_headers(data[pos + 2 : end]))
                pos, self.state = end + 4, _DATA

    def finish(self) -> None:
        if self.state != _END:
            raise malformed("it ends before its closing boundary")

    def _scan(self, data: bytes, pos: int) -> tuple[int, int]:
        """(index of the first delimiter at or after pos or -1, and where to stop handing on bytes if none:
        the start of a delimiter cut off by the chunk's end, else the end). Every delimiter starts with CR."""
        delimiter, size = self.delimiter, len(data)
        at = data.find(b"\r", pos)
        for _ in range(CR_MISSES):
            if at < 0:
                return -1, size
            if data.startswith(delimiter, at):
                return at, at
            if size - at < len(delimiter) and delimiter.startswith(data[at:]):
                return -1, at
            at = data.find(b"\r", at + 1)
        found = data.find(delimiter, at) if at >= 0 else -1
        if found >= 0 or at < 0:
            return found, found if found >= 0 else size
        tail = data.find(b"\r", max(at, size - len(delimiter) + 1))
        while tail >= 0 and not delimiter.startswith(data[tail:]):
            tail = data.find(b"\r", tail + 1)
        return -1, tail if tail >= 0 else size


def _headers(block: bytes) -> dict[str, bytes]:
    headers = {}
    for line in block.split(b"\r\n") if block else ():
        name, colon, value = line.partition(b":")
        if not colon:
            raise malformed("a part header has no ':'")
        headers[name.strip().decode("latin-1").lower()] = value.strip()
    return headers


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise bad_request("Uploads are multipart/form-data with the fields 'file' and 'purpose'.", param="file")
    return options[b"boundary"]


async def receive_upload(stream: AsyncIterator[bytes], content_type: str | None, upload: Upload) -> FileRecord:
    """Parse the body into `upload` and commit it (in threads: the event loop never waits on the disk). One block's
    write runs while the next block is received, so the disk and the parser overlap; at most two blocks in memory."""
    parts = _Parts()
    parser = FormParser(boundary_of(content_type), parts)
    writing: asyncio.Future[None] | None = None

    async def flush(pieces: list[bytes]) -> None:
        nonlocal writing
        if writing is not None:
            await writing
        writing = asyncio.ensure_future(anyio.to_thread.run_sync(upload.write, *pieces)) if pieces else None
        if upload.over_limit:
            raise too_large(upload.limit)

    await anyio.to_thread.run_sync(upload.open)
    try:
        async for chunk in stream:
            parser.feed(chunk)
            if parts.full():
                await flush(parts.take_pending())
        parser.finish()
        await flush(parts.take_pending())
        await flush([])
        if parts.filename is None:
            raise bad_request("Missing required parameter: 'file'.", param="file")
        purpose = parts.fields.get("purpose")
        return await anyio.to_thread.run_sync(
            upload.commit, parts.filename, purpose.decode("utf-8", "replace").strip() if purpose is not None else None
        )
    except ApiError:
        await _settle(writing)
        await anyio.to_thread.run_sync(upload.abort)
        await drain(stream)  # so the client reads the error, not a reset connection
        raise
    except BaseException:
        await _settle(writing)
        await anyio.to_thread.run_sync(upload.abort)
        raise


async def _settle(writing: asyncio.Future[None] | None) -> None:
    """Wait out a write still in flight (its own error, if any, is beside the point now) before the folder goes."""
    if writing is not None:
        await asyncio.gather(writing, return_exceptions=True)


async def drain(stream: AsyncIterator[bytes], limit: int = DRAIN_BYTES) -> Any:
    read = 0
    async for chunk in stream:
        read += len(chunk)
        if read > limit:
            return
