"""HTTP for /v1/files: each route is one call of a plain function in store.py / jobfiles.py."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import FileResponse

from spoold.api.batches.view import page
from spoold.api.context import api_key, context
from spoold.api.errors import bad_request, not_found
from spoold.api.files import store
from spoold.api.files.jobfiles import job_file
from spoold.api.files.multipart import drain, receive_upload
from spoold.api.ids import UPLOAD_ID, new_upload_id
from spoold.api.keys import ApiKey

router = APIRouter()


class StreamedFile(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB costs a thread hop per chunk: a MiB keeps downloads near disk speed


@router.post("/files")
async def create_file(request: Request, key: ApiKey = Depends(api_key), idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    ctx = context(request)
    file_id = new_upload_id(key.name, idempotency_key)
    if idempotency_key is not None:
        first = await anyio.to_thread.run_sync(store.existing, ctx.area, file_id)
        if first is not None:  # a retry: the first answer; the body is read and dropped
            await drain(request.stream())
            return first.file_object()
    upload = store.Upload(ctx.area, key.name, file_id, ctx.max_file_bytes, idempotent=idempotency_key is not None)
    record = await receive_upload(request.stream(), request.headers.get("content-type"), upload)
    return record.file_object()


@router.get("/files")
def list_files(
    request: Request, key: ApiKey = Depends(api_key), purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
    after: str | None = None, order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:  # fmt: skip
    uploads = [r for r in store.list_uploads(context(request).area, key) if purpose is None or r.purpose == purpose]
    uploads.sort(key=lambda r: (r.created_at, r.id), reverse=order == "desc")
    if after is not None:
        position = next((i for i, r in enumerate(uploads) if r.id == after), None)
        uploads = uploads[position + 1 :] if position is not None else []
    shown = uploads[:limit]
    return page([r.file_object() for r in shown], len(uploads) > limit)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    ctx = context(request)
    if UPLOAD_ID.match(file_id):
        return store.get_upload(ctx.area, key, file_id).file_object()
    return job_file(ctx.area, key, file_id)[1]


@router.get("/files/{file_id}/content")
def file_content(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> FileResponse:
    ctx = context(request)
    if UPLOAD_ID.match(file_id):
        record = store.get_upload(ctx.area, key, file_id)
        path, name = store.content_path(ctx.area, record), record.filename
    else:
        path, obj = job_file(ctx.area, key, file_id)
        name = obj["filename"]
    try:
        return StreamedFile(path, media_type="application/jsonl", filename=name, content_disposition_type="attachment")
    except FileNotFoundError:
        raise not_found("file", file_id) from None


@router.delete("/files/{file_id}")
def delete_file(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    if not UPLOAD_ID.match(file_id):
        job_file(context(request).area, key, file_id)  # a 404 unless the caller may see it
        raise bad_request(
            "A batch's own files go with the batch (retention, or `spoold prune`); only uploads can be deleted.", param="file_id"
        )
    return store.delete_upload(context(request).area, key, file_id)
