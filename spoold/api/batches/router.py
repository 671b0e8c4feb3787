"""HTTP for /v1/batches: each route is one call of a plain function in create.py / view.py."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request

from spoold.api.batches.create import create_batch, parse_create
from spoold.api.batches.view import MAX_PAGE, batch_object, cancel_batch, list_batches, retrieve
from spoold.api.context import api_key, context
from spoold.api.errors import bad_request
from spoold.api.keys import ApiKey

router = APIRouter()
MAX_BODY = 1 << 20


@router.post("/batches")
async def create(request: Request, key: ApiKey = Depends(api_key), idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    import anyio

    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise bad_request("The request body is too large for a batch create.")
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not JSON.") from None
    ctx = context(request)

    def run() -> dict[str, Any]:
        record = create_batch(ctx.area, key, parse_create(body), ctx.settings, idempotency_key)
        batch = batch_object(ctx.area, record.id, record)
        assert batch is not None, "a batch just made is in the spool"
        return batch

    return await anyio.to_thread.run_sync(run)


@router.get("/batches")
def list_(
    request: Request, key: ApiKey = Depends(api_key), limit: int = Query(20, ge=1, le=MAX_PAGE), after: str | None = None
) -> dict[str, Any]:
    return list_batches(context(request).area, key, limit, after)


@router.get("/batches/{batch_id}")
def get(batch_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    return retrieve(context(request).area, key, batch_id)


@router.post("/batches/{batch_id}/cancel")
def cancel(batch_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    ctx = context(request)
    return cancel_batch(ctx.area, key, batch_id, ctx.node, ctx.handlers)
