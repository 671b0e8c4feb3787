"""The FastAPI app: routers under /v1, /health, and one mapping of every error to OpenAI's error object."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from spoold import __version__
from spoold.api.batches.router import router as batches_router
from spoold.api.context import ApiContext
from spoold.api.errors import ApiError
from spoold.api.files.router import router as files_router
from spoold.api.metrics import ApiMetrics, MetricsMiddleware
from spoold.api.models import router as models_router
from spoold.errors import SpooldError

log = logging.getLogger(__name__)


def create_app(ctx: ApiContext, metrics: ApiMetrics | None = None) -> FastAPI:
    app = FastAPI(title="spoold OpenAI Batch API", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.spoold = ctx
    for router in (files_router, batches_router, models_router):
        app.include_router(router, prefix="/v1")

    @app.get("/health")
    def health() -> JSONResponse:
        problem = ctx.area.spool.check()
        if problem:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        error = ApiError(400, f"Invalid {where or 'request'}: {first.get('msg', 'invalid value')}.", param=where)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(ApiError(exc.status_code, message, type=kind).body(), status_code=exc.status_code)

    @app.exception_handler(SpooldError)
    async def spoold_error(request: Request, exc: SpooldError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        error = ApiError(500, f"The spool could not be read or written: {exc.strerror or exc}.", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
