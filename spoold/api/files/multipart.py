"""A multipart/form-data upload parsed as it arrives (python-multipart's streaming parser, fed from
Starlette's `request.stream()`): the file part goes straight into its temp folder in the spool, in blocks
of WRITE_BUFFER, one worker-thread hop per block (not per received chunk), each block written while the
next is received; never to /tmp and never whole in memory. The small `purpose` field is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from spoold.api.errors import ApiError, bad_request, too_large
from spoold.api.files.store import WRITE_BUFFER, FileRecord, Upload

MAX_FIELD_BYTES = 4096
"""Form fields other than the file (purpose) are short; a longer one is a 400."""
DRAIN_BYTES = 1 << 30
"""After a refusal, up to this much of the rest of the body is read (and dropped) so the client sees the error
instead of a reset connection; a larger rest is cut off."""


class _Parts:
    """The parser's callbacks: which part is current, its headers, the file's pending bytes."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.fields: dict[str, bytes] = {}
        self.filename: str | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._part: str | None = None
        self._in_file = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done, "on_part_data": self._data,
        }  # fmt: skip

    def _begin(self) -> None:
        self._headers, self._part, self._in_file = {}, None, False

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition"))
        self._part = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self._part != "file":
                raise bad_request(f"Unexpected file field {self._part!r}: the upload goes in the field 'file'.", param=self._part)
            if self.filename is not None:
                raise bad_request("Only one file per upload.", param="file")
            self.filename = options[b"filename"].decode("utf-8", "replace").replace("/", "_")[-255:]
            self._in_file = True
        else:
            self.fields.setdefault(self._part, b"")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
            return
        value = self.fields.get(self._part or "", b"") + data[start:end]
        if len(value) > MAX_FIELD_BYTES:
            raise bad_request(f"Form field {self._part!r} is too long.", param=self._part)
        self.fields[self._part or ""] = value

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return data


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise bad_request("Uploads are multipart/form-data with the fields 'file' and 'purpose'.", param="file")
    return options[b"boundary"]


async def receive_upload(stream: AsyncIterator[bytes], content_type: str | None, upload: Upload) -> FileRecord:
    """Parse the body into `upload` and commit it (in threads: the event loop never waits on the disk). One block's
    write runs while the next block is received, so the disk and the parser overlap; at most two blocks in memory."""
    parts = _Parts(upload)
    parser = MultipartParser(boundary_of(content_type), parts.callbacks())  # type: ignore[arg-type]
    writing: asyncio.Future[None] | None = None

    async def flush(data: bytes) -> None:
        nonlocal writing
        if writing is not None:
            await writing
        writing = asyncio.ensure_future(anyio.to_thread.run_sync(upload.write, data)) if data else None
        if upload.over_limit:
            raise too_large(upload.limit)

    await anyio.to_thread.run_sync(upload.open)
    try:
        async for chunk in stream:
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise bad_request(f"Malformed multipart body: {exc}.", param="file") from None
            if parts.pending_bytes >= WRITE_BUFFER:
                await flush(parts.take_pending())
        parser.finalize()
        await flush(parts.take_pending())
        await flush(b"")
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
