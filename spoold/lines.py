"""One input line -> one request or one line error (SPEC section 4). Pure: no I/O, no state.

Each line is judged on its own so a bad line never stops the file. Duplicate
custom_ids need the whole file and are found by `validate.py`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from spoold.engine.base import EngineRequest, RequestKind
from spoold.pooling_bodies import PROBLEMS as POOLING_PROBLEMS

URL_KINDS: dict[str, RequestKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embeddings",
    "/v1/score": "score",
    "/v1/rerank": "rerank",
}
KIND_URLS: dict[RequestKind, str] = {kind: url for url, kind in URL_KINDS.items()}


@dataclass(frozen=True)
class LineError:
    line: int
    code: str
    message: str
    custom_id: str | None = None


def parse_line(
    raw: bytes, line: int, job_model: str, *, unterminated: bool = False, serves: Collection[str] | None = None
) -> EngineRequest | LineError | None:
    """Parse one raw line (with or without its newline). None means a blank line, which is skipped.

    `unterminated` marks a last line with no newline: if it does not parse, the
    upload was probably cut off, and the error says so. `serves` is the line
    kinds the job's model answers (its profile's task); None skips that check
    (the engine makes it too).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(line, "invalid_encoding", f"line is not UTF-8 (byte {exc.start})")
    text = text.strip().removeprefix("\ufeff")  # a BOM from Windows editors is not part of the JSON
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if unterminated:
            return LineError(line, "truncated_line", "last line is cut off (no newline at end of file): was the upload complete?")
        return LineError(line, "invalid_json", f"line is not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return LineError(line, "invalid_request", f"line must be a JSON object, got {type(obj).__name__}")
    return _request_from_object(obj, line, job_model, serves)


def _request_from_object(
    obj: dict[str, Any], line: int, job_model: str, serves: Collection[str] | None
) -> EngineRequest | LineError:
    if "url" in obj or "body" in obj or "method" in obj:
        custom_id = obj.get("custom_id", f"line-{line}")
        cid = custom_id if isinstance(custom_id, str) else None
        if not isinstance(custom_id, str) or not custom_id:
            return LineError(line, "invalid_request", "custom_id must be a non-empty string")
        method = obj.get("method", "POST")
        if method != "POST":
            return LineError(line, "invalid_request", f"method must be POST, got {method!r}", cid)
        url = obj.get("url")
        if url not in URL_KINDS:
            return LineError(line, "invalid_url", f"url must be one of {', '.join(URL_KINDS)}, got {url!r}", cid)
        body = obj.get("body")
        if not isinstance(body, dict):
            return LineError(line, "invalid_request", "body must be a JSON object", cid)
        unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
        if unknown:
            return LineError(line, "invalid_request", f"unknown key(s) {', '.join(unknown)}", cid)
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
        return "model_mismatch", f"body.model {model!r} does not match the job's model {job_model!r}"
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
    return None
