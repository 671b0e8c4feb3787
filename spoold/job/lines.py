"""One input line -> one request or one line error (SPEC section 4). Pure: no I/O, no state.

Each line is judged on its own so a bad line never stops the file: whatever a
line holds (deep nesting, huge numbers, lone surrogates, NUL bytes, ...), and
whatever exception judging it raises, the answer is a LineError for that line.
Duplicate custom_ids need the whole file and are found by `validate.py`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from spoold.engine import body_rules
from spoold.engine.base import KIND_URLS, URL_KINDS, EngineRequest, RequestKind
from spoold.engine.faults import one_line
from spoold.engine.pooling_bodies import PROBLEMS as POOLING_PROBLEMS
from spoold.job.reader import RawLine

MAX_NESTING = 128
"""Deepest nesting of [ and { a line may have. Real requests (JSON schemas included) stay far
below; records nest a line's body 4 levels deeper and pydantic refuses to write past 255."""
TOO_DEEP = f"line is nested too deeply (more than {MAX_NESTING} levels of [ and {{)"
SHOWN_CHARS = 60
"""Values quoted in error messages are cut to this, so one huge line cannot bloat batch.json."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(r"\d{19}")
"""19 digits in a row: maybe an integer past 64 bits, which orjson reads as a float (the standard decoder keeps it an int)."""
_LONG_DIGITS_B = re.compile(rb"\d{19}")
_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
"""bytes.translate table: every ASCII digit -> "0", every other byte -> " "."""
_DIGIT_RUN = b"0" * 19
_ENVELOPE = frozenset({"custom_id", "method", "url", "body"})


def _long_digits(raw: bytes) -> bool:
    """`_LONG_DIGITS_B` matches somewhere in `raw` (19 ASCII digits in a row), found in C without the regex scan."""
    return _DIGIT_RUN in raw.translate(_DIGIT_MAP)


class _BadNumber(ValueError):
    """A number JSON's grammar allows but no request can use (or a NaN/Infinity it does not allow)."""


@dataclass(frozen=True)
class LineError:
    line: int
    code: str
    message: str
    custom_id: str | None = None


def parse_raw_line(raw: RawLine, job_model: str, serves: Collection[str] | None = None) -> EngineRequest | LineError | None:
    """`parse_line` for a line from `read_lines`, including one over max_line_bytes (never read whole)."""
    if raw.too_long is not None:
        return LineError(raw.number, "line_too_long",
                         f"line is {raw.size:,} bytes, more than max_line_bytes ({raw.too_long:,}); it was skipped unread")  # fmt: skip
    return parse_line(raw.data, raw.number, job_model, unterminated=raw.unterminated, serves=serves)


def parse_line(
    raw: bytes, line: int, job_model: str, *, unterminated: bool = False, serves: Collection[str] | None = None
) -> EngineRequest | LineError | None:
    """Parse one raw line (with or without its newline). None means a blank line, which is skipped.

    `unterminated` marks a last line with no newline: if it does not parse, the
    upload was probably cut off, and the error says so. `serves` is the line
    kinds the job's model answers (its profile's task); None skips that check
    (the engine makes it too). Never raises.
    """
    try:
        return _parse(raw, line, job_model, unterminated, serves)
    except RecursionError:
        return LineError(line, "invalid_json", TOO_DEEP)
    except Exception as exc:  # noqa: BLE001 - a poison line is that line's error, never the job's
        return LineError(line, "invalid_request", f"line could not be read: {one_line(exc)}")


def short_repr(value: object) -> str:
    """repr() cut to SHOWN_CHARS, for quoting a user's value in a message (containers by type)."""
    return cut(repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__}")


def cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _parse(raw: bytes, line: int, job_model: str, unterminated: bool, serves: Collection[str] | None) -> EngineRequest | LineError | None:
    obj = _plain_object(raw)
    if obj is not None:  # the usual line: the checks below that it passed need not be made again
        return _request_from_object(obj, line, job_model, serves)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(line, "invalid_encoding", f"line is not UTF-8 (byte {exc.start})")
    text = text.strip().removeprefix("\ufeff")  # a BOM from Windows editors is not part of the JSON
    if not text:
        return None
    if "\x00" in text:
        return LineError(line, "invalid_json", "line contains a NUL byte (binary data, or UTF-16 text?)")
    try:
        obj = _decode(text)
    except json.JSONDecodeError as exc:
        if unterminated:
            return LineError(line, "truncated_line", "last line is cut off (no newline at end of file): was the upload complete?")
        return LineError(line, "invalid_json", f"line is not valid JSON ({exc.msg} at column {exc.colno})")
    except _BadNumber as exc:
        return LineError(line, "invalid_json", f"line is not valid JSON ({exc})")
    except ValueError as exc:  # int() refusing a number of more than sys.get_int_max_str_digits() digits
        if "digits" not in str(exc):
            raise
        return LineError(line, "invalid_json", f"line has a number of more than {sys.get_int_max_str_digits()} digits")
    if not isinstance(obj, dict):
        return LineError(line, "invalid_request", f"line must be a JSON object, got {type(obj).__name__}")
    problem = _structure_problem(obj, text)
    if problem:
        return LineError(line, *problem)
    return _request_from_object(obj, line, job_model, serves)


def _no_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _BadNumber(f"number {short_repr(text)} is too large")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
"""Made once: json.loads with keyword arguments builds a new decoder on every call."""


def _decode(text: str) -> Any:
    """The JSON value of `text`, as `_DECODER` reads it. orjson first (about 4x faster): where it reads
    a value at all it reads the same one (same floats, last duplicate key wins), and everything it refuses
    (NaN, an infinite number, a lone surrogate, very deep nesting, a BOM) goes to `_DECODER`, whose error says why."""
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _DECODER.decode(text)


def _plain_object(raw: bytes) -> dict[str, Any] | None:
    """The line's object when orjson reads the raw bytes as one and it nests no deeper than MAX_NESTING; else None.

    What orjson accepts is valid UTF-8 with no BOM, NUL or lone surrogate, and decodes to what
    `_decode` makes of the stripped text (integers of 19+ digits aside: those take the long way)."""
    if not isinstance(raw, bytes) or _long_digits(raw):
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        return None
    return obj


def known_good_request(raw: RawLine, serves: Collection[str] | None = None) -> EngineRequest | None:
    """The request `parse_raw_line` makes of a line the validating pass found valid, with a fraction of the work.

    For a job whose pass found no invalid line (no duplicate custom_id either), each line is read
    again only to feed it: what the pass checked holds for the same bytes, so this only decodes the
    JSON and takes the request apart. None for a blank line. Anything unexpected (the line no longer
    decodes, or lacks what its pass saw) raises; the caller then judges the line in full."""
    data = raw.data
    if raw.too_long is not None or _long_digits(data):
        raise ValueError("not a line for the short path")
    if not data.strip():
        return None
    obj = orjson.loads(data)  # a BOM, or whitespace JSON does not know, raises: the full parse strips them
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    line = raw.number
    if "url" in obj or "body" in obj or "method" in obj:
        kind = URL_KINDS[obj["url"]]
        body = obj["body"]
        custom_id = obj.get("custom_id", f"line-{line}")
    else:
        body = dict(obj)
        custom_id = body.pop("custom_id", f"line-{line}")
        bare: RequestKind | None = (
            "chat" if "messages" in body else "completion" if "prompt" in body else "embeddings" if "input" in body else None
        )
        if bare is None:
            raise ValueError("no request kind")
        kind = bare
    if not isinstance(body, dict) or not isinstance(custom_id, str) or (serves is not None and kind not in serves):
        raise ValueError("not the shape its pass saw")  # (a pass run without the model's kinds did not check them)
    return EngineRequest(line=line, custom_id=custom_id, kind=kind, body=body)


def _structure_problem(obj: dict[str, Any], text: str) -> tuple[str, str] | None:
    """Nesting past MAX_NESTING, or a string with a lone UTF-16 surrogate (valid JSON, invalid
    Unicode: no tokenizer or UTF-8 writer takes it). Cheap tests first: most lines skip the walk."""
    deep = text.count("[") + text.count("{") > MAX_NESTING
    surrogates = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    if not (deep or surrogates):
        return None
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            lone = _lone_surrogate(value) if surrogates else None
            if lone is not None:
                return "invalid_encoding", f"line has an unpaired surrogate escape \\u{ord(lone):04x} in a string (not valid Unicode)"
            continue
        if depth > MAX_NESTING:
            return "invalid_json", TOO_DEEP
        items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        for key, item in items:
            if key is not None:
                stack.append((key, depth))
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
            elif isinstance(item, str):
                stack.append((item, depth))
    return None


def _lone_surrogate(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return value[exc.start]
    return None


def _request_from_object(obj: dict[str, Any], line: int, job_model: str, serves: Collection[str] | None) -> EngineRequest | LineError:
    if "url" in obj or "body" in obj or "method" in obj:
        custom_id = obj.get("custom_id", f"line-{line}")
        cid = custom_id if isinstance(custom_id, str) else None
        if not isinstance(custom_id, str) or not custom_id:
            return LineError(line, "invalid_request", "custom_id must be a non-empty string")
        method = obj.get("method", "POST")
        if method != "POST":
            return LineError(line, "invalid_request", f"method must be POST, got {short_repr(method)}", cid)
        url = obj.get("url")
        if not isinstance(url, str) or url not in URL_KINDS:
            return LineError(line, "invalid_url", f"url must be one of {', '.join(URL_KINDS)}, got {short_repr(url)}", cid)
        body = obj.get("body")
        if not isinstance(body, dict):
            return LineError(line, "invalid_request", "body must be a JSON object", cid)
        unknown = None if _ENVELOPE.issuperset(obj) else sorted(set(obj) - _ENVELOPE)
        if unknown:
            return LineError(line, "invalid_request", f"unknown key(s) {cut(', '.join(unknown))}", cid)
        kind = URL_KINDS[url]
    else:
        body = dict(obj)
        custom_id = body.pop("custom_id", f"line-{line}")
        if not isinstance(custom_id, str) or not custom_id:
            return LineError(line, "invalid_request", "custom_id must be a non-empty string")
        if "messages" in body:
            kind = "chat"
        elif "prompt" in body:
            kind = "completion"
        elif "input" in body:
            kind = "embeddings"
        else:
            return LineError(
                line, "invalid_request", "a line without url needs messages (chat), prompt (completion) or input (embeddings)", custom_id
            )
    if serves is not None and kind not in serves:
        return LineError(line, "unsupported_kind", f"model {job_model} cannot serve {KIND_URLS[kind]} lines", custom_id)
    problem = _body_problem(kind, body, job_model)
    if problem:
        code, message = problem
        return LineError(line, code, message, custom_id)
    return EngineRequest(line=line, custom_id=custom_id, kind=kind, body=body)


def _body_problem(kind: RequestKind, body: dict[str, Any], job_model: str) -> tuple[str, str] | None:
    model = body.get("model")
    if model is not None and model != job_model:
        return "model_mismatch", f"body.model {short_repr(model)} does not match the job's model {job_model!r}"
    if kind in POOLING_PROBLEMS:
        problem = POOLING_PROBLEMS[kind](body)
        return ("invalid_request", problem) if problem else None
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "invalid_request", "messages must be a non-empty list"
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return "invalid_request", f"messages[{i}] must be an object with a role"
            content = message.get("content")
            if content is not None and not isinstance(content, (str, list)):
                return "invalid_request", f"messages[{i}].content must be a string or a list of parts"
    else:
        prompt = body.get("prompt")
        is_tokens = isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)
        if not (isinstance(prompt, str) or is_tokens):
            return "invalid_request", "prompt must be a string or a non-empty list of token ids"
    problem = body_rules.body_problem(kind, body)
    return ("invalid_request", problem) if problem else None
