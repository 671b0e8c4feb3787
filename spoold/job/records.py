"""Output and error lines in the OpenAI Batch output shape (SPEC section 5)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from spoold.engine.responses import random_hex

_LINE_BREAKERS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
SAFE_DEPTH = 200
"""In the fallback writer, values nested deeper than this are replaced by a note."""


@dataclass(frozen=True, slots=True)
class RecordError:
    code: str
    message: str
    line: int


class BatchRecord:
    """One output or error line: `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message", "line"} | null}`.

    Built per line on the main thread, so it only keeps its parts; the record is
    shaped and encoded by `to_line` on the job I/O thread, once per record."""

    __slots__ = ("custom_id", "body", "error")

    def __init__(self, custom_id: str | None, body: dict[str, Any] | None, error: RecordError | None) -> None:
        self.custom_id = custom_id
        self.body = body
        self.error = error

    def to_line(self) -> bytes:
        """One compact JSON line, keys in the order above (the ids are drawn here). U+2028, U+2029 and U+0085
        are escaped: valid JSON either way, but str.splitlines() and JavaScript line readers would split a record on them."""
        return escape_breakers(encode_line(self.plain()))

    def plain(self) -> dict[str, Any]:
        """The record as plain values, in the order it is written."""
        record_id, request_id = _ids()
        error = self.error
        if error is not None:
            return {"id": record_id, "custom_id": self.custom_id, "response": None,
                    "error": {"code": error.code, "message": error.message, "line": error.line}}  # fmt: skip
        return {
            "id": record_id,
            "custom_id": self.custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": self.body},
            "error": None,
        }


def encode_line(record: dict[str, Any]) -> bytes:
    """`record` as compact JSON (UTF-8, not ASCII-escaped, NaN and infinities as null) plus a newline.

    orjson writes what `json.dumps(record, ensure_ascii=False, separators=(",", ":"))` writes for
    JSON data, several times faster; what it refuses (a lone surrogate, an integer past 64 bits, a
    non-string key, nesting past 254) goes through `_safe` and the standard library instead."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError
        text = json.dumps(_safe(record, 0), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")


def escape_breakers(lines: bytes) -> bytes:
    """U+2028, U+2029 and U+0085 escaped in encoded lines (rare: three scans are far cheaper than translate())."""
    if b"\xe2\x80\xa8" in lines or b"\xe2\x80\xa9" in lines or b"\xc2\x85" in lines:
        return lines.decode("utf-8").translate(_LINE_BREAKERS).encode("utf-8")
    return lines


def encode_records(records: list[BatchRecord]) -> tuple[bytes, bytes]:
    """The records' lines, as `to_line` writes each: (the success lines, the error lines), each joined.

    One call per chunk: the line-breaker scan runs once over each block instead of once per record."""
    output: list[bytes] = []
    errors: list[bytes] = []
    for record in records:
        (output if record.error is None else errors).append(encode_line(record.plain()))
    return escape_breakers(b"".join(output)), escape_breakers(b"".join(errors))


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
    token = random_hex()  # what uuid4().hex carries, without a system call per record
    return f"batch_req_{token}", f"req_{token}"


def success_record(custom_id: str, body: dict[str, Any]) -> BatchRecord:
    return BatchRecord(custom_id, body, None)


def error_record(custom_id: str | None, line: int, code: str, message: str) -> BatchRecord:
    return BatchRecord(custom_id, None, RecordError(code, message, line))
