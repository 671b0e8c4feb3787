"""One exception type, mapped once (app.py) to OpenAI's error object with OpenAI's status codes."""

from __future__ import annotations

from typing import Any

from spoold.errors import SpooldError


class ApiError(SpooldError):
    """An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(kind: str, ident: str) -> ApiError:
    """Unknown ids and other keys' ids read the same: a 404, never a 403."""
    shown = ident if len(ident) <= 80 else ident[:77] + "..."
    return ApiError(404, f"No {kind} found with id {shown!r}.", param="id", code=f"{kind}_not_found")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"File is larger than this server's limit of {limit} bytes (api.max_file_bytes).", param="file", code="file_too_large"
    )


def over_queue_limit(message: str) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="queued_requests_limit")
