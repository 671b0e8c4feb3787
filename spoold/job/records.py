"""Output and error lines in the OpenAI Batch output shape (SPEC section 5)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

_LINE_BREAKERS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
SAFE_DEPTH = 200
"""In the fallback writer, values nested deeper than this are replaced by a note."""


class RecordError(BaseModel):
    code: str
    message: str
    line: int


class RecordResponse(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any] | None


class BatchRecord(BaseModel):
    id: str
    custom_id: str | None
    response: RecordResponse | None
    error: RecordError | None

    def to_line(self) -> bytes:
        """One JSON line. U+2028, U+2029 and U+0085 are escaped: valid JSON either way, but
        str.splitlines() and JavaScript line readers would split a record on them."""
        try:
            text = self.model_dump_json()
        except (PydanticSerializationError, ValueError):  # a lone surrogate, nesting past pydantic's limit
            text = json.dumps(_safe(self._plain(), 0), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if "\u2028" in text or "\u2029" in text or "\x85" in text:  # rare: a scan is ~50x cheaper than translate()
            text = text.translate(_LINE_BREAKERS)
        return (text + "\n").encode("utf-8")

    def _plain(self) -> dict[str, Any]:
        """The record as plain values, without pydantic (which refused to write it)."""
        response = self.response and {
            "status_code": self.response.status_code,
            "request_id": self.response.request_id,
            "body": self.response.body,
        }
        error = self.error and {"code": self.error.code, "message": self.error.message, "line": self.error.line}
        return {"id": self.id, "custom_id": self.custom_id, "response": response, "error": error}


def _safe(value: Any, depth: int) -> Any:
    """A copy that any JSON writer takes: lone surrogates become U+FFFD, NaN and infinities null,
    anything nested past SAFE_DEPTH a note. Only used when the normal writer failed."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    if depth >= SAFE_DEPTH:
        return "(nested too deeply to write)"
    if isinstance(value, dict):
        return {_safe(str(k), depth): _safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v, depth + 1) for v in value]
    return _safe(str(value), depth)


def _ids() -> tuple[str, str]:
    token = os.urandom(16).hex()  # what uuid4().hex carries (random bits), without building a UUID
    return f"batch_req_{token}", f"req_{token}"


def success_record(custom_id: str, body: dict[str, Any]) -> BatchRecord:
    record_id, request_id = _ids()
    # built without validation: every field comes from spoold itself
    response = RecordResponse.model_construct(status_code=200, request_id=request_id, body=body)
    return BatchRecord.model_construct(id=record_id, custom_id=custom_id, response=response, error=None)


def error_record(custom_id: str | None, line: int, code: str, message: str) -> BatchRecord:
    record_id, _ = _ids()
    return BatchRecord(id=record_id, custom_id=custom_id, response=None, error=RecordError(code=code, message=message, line=line))
