"""Reading a finished job's records for the handlers that load them elsewhere (postgres, label_studio).

Pure helpers over the files of SPEC section 5: stream the JSON lines (never a
whole file in memory) and pull the few fields a row or a task is made of.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from spoold.handlers.base import PermanentHandlerError

FINAL_STATUSES = ("completed", "failed", "cancelled")


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a results file, one at a time; a missing file has none."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise PermanentHandlerError(f"{path.name} line {number} is not JSON") from None
            if isinstance(record, dict):
                yield record


def response_body(record: Mapping[str, Any]) -> dict[str, Any] | None:
    response = record.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    return body if isinstance(body, dict) else None


def status_code(record: Mapping[str, Any]) -> int | None:
    response = record.get("response")
    code = response.get("status_code") if isinstance(response, dict) else None
    return code if isinstance(code, int) else None


def error_of(record: Mapping[str, Any]) -> dict[str, Any] | None:
    error = record.get("error")
    return error if isinstance(error, dict) else None


def answer_text(body: Mapping[str, Any] | None) -> str | None:
    """The generated text of a chat or completion response, if there is one."""
    choices = (body or {}).get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None


def usage_tokens(body: Mapping[str, Any] | None) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, total) tokens of a response, None where not given."""
    usage = (body or {}).get("usage")
    if not isinstance(usage, dict):
        return None, None, None

    def number(*keys: str) -> int | None:
        for key in keys:
            if isinstance(usage.get(key), int):
                return usage[key]
        return None

    return number("prompt_tokens", "input_tokens"), number("completion_tokens", "output_tokens"), number("total_tokens")


def finished_at(batch: Mapping[str, Any]) -> float | None:
    """When the job ended (unix seconds), from `completed_at` / `failed_at` / `cancelled_at`."""
    for status in FINAL_STATUSES:
        value = batch.get(f"{status}_at")
        if isinstance(value, int | float):
            return float(value)
    return None


def prompt_of(request: Mapping[str, Any]) -> str | None:
    """The prompt of an input line (SPEC section 4): the last user message of a chat, or a completion's prompt."""
    inner = request.get("body")
    body: Mapping[str, Any] = inner if isinstance(inner, dict) else request
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return None
    for key in ("prompt", "input"):
        if key in body:
            return _text(body[key])
    return None


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat content parts, or a list of prompts
        parts = [p.get("text") if isinstance(p, dict) else p for p in content]
        return "\n".join(p for p in parts if isinstance(p, str)) or None
    return None


def requests_by_custom_id(input_path: Path) -> dict[str, dict[str, Any]]:
    """The job's request bodies keyed by custom_id (`line-N` where a line has none, as SPEC section 4 says)."""
    found: dict[str, dict[str, Any]] = {}
    try:
        fh = open(input_path, encoding="utf-8")
    except FileNotFoundError:
        return found
    with fh:
        number = 0
        for line in fh:
            number += 1
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                continue  # a bad line: its error record already says so
            if isinstance(request, dict):
                custom_id = request.get("custom_id")
                found.setdefault(str(custom_id) if custom_id is not None else f"line-{number}", request)
    return found
