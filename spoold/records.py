"""Output and error lines in the OpenAI Batch output shape (SPEC section 5)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel


_LINE_BREAKERS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


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
        return (self.model_dump_json().translate(_LINE_BREAKERS) + "\n").encode("utf-8")


def _ids() -> tuple[str, str]:
    token = uuid.uuid4().hex
    return f"batch_req_{token}", f"req_{token}"


def success_record(custom_id: str, body: dict[str, Any]) -> BatchRecord:
    record_id, request_id = _ids()
    return BatchRecord(
        id=record_id,
        custom_id=custom_id,
        response=RecordResponse(status_code=200, request_id=request_id, body=body),
        error=None,
    )


def error_record(custom_id: str | None, line: int, code: str, message: str) -> BatchRecord:
    record_id, _ = _ids()
    return BatchRecord(id=record_id, custom_id=custom_id, response=None, error=RecordError(code=code, message=message, line=line))
