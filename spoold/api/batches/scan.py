"""What a create needs to know about an input file: its request count, urls and models (one pass, no HTTP).

msgspec decodes only `url`, `model` and `body.model` of each line and skips the rest (still
checking it is JSON), at several hundred MB/s: a create of a multi-GB file reads it once.
A line that does not decode is only counted: it becomes that line's error when the job runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from pydantic import BaseModel

from spoold.engine.base import KIND_URLS
from spoold.fsutil import atomic_write_json, read_json

BLOCK = 4 << 20
MAX_SHOWN = 5


class _Body(msgspec.Struct):
    model: str | None = None


class _Line(msgspec.Struct):
    url: str | None = None
    body: _Body | None = None
    model: str | None = None
    messages: msgspec.Raw = msgspec.Raw(b"")
    prompt: msgspec.Raw = msgspec.Raw(b"")
    input: msgspec.Raw = msgspec.Raw(b"")


_decode = msgspec.json.Decoder(_Line).decode


class Summary(BaseModel):
    lines: int = 0
    """Non-blank lines: the job's requests (good and bad)."""
    bad: int = 0
    urls: dict[str, int] = {}
    """Each line's url (shorthand lines: the url their body implies), with the first line number that has it."""
    models: dict[str, int] = {}
    """Each body.model named, with the first line number that names it."""


def scan_lines(lines: list[bytes], summary: Summary, first_number: int) -> int:
    """Fold `lines` (numbered from `first_number`) into `summary`; returns the next line number (pure)."""
    count, bad, urls, models = 0, 0, summary.urls, summary.models  # locals: pydantic's setattr is slow per line
    number = first_number
    for raw in lines:
        number += 1
        if not raw.strip():
            continue
        count += 1
        try:
            line = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad += 1
            continue
        url = line.url or _shorthand_url(line)
        if url and url not in urls:
            urls[url] = number - 1
        model = line.body.model if line.body is not None and line.url else line.model
        if model and model not in models:
            models[model] = number - 1
    summary.lines += count
    summary.bad += bad
    return number


def _shorthand_url(line: _Line) -> str | None:
    if line.messages:
        return KIND_URLS["chat"]
    if line.prompt:
        return KIND_URLS["completion"]
    if line.input:
        return KIND_URLS["embeddings"]
    return None


def scan_file(path: Path, max_line_bytes: int) -> Summary:
    """One streaming pass; a line longer than `max_line_bytes` counts as bad without being held whole."""
    summary, number, carry, skipping = Summary(), 1, b"", False
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            parts = (carry + block).split(b"\n")
            carry = parts.pop()
            if skipping and parts:  # the rest of an over-long line ends here
                parts.pop(0)
                summary.lines, summary.bad, number, skipping = summary.lines + 1, summary.bad + 1, number + 1, False
            number = scan_lines(parts, summary, number)
            if len(carry) > max_line_bytes:
                carry, skipping = b"", True
    if skipping:
        summary.lines, summary.bad = summary.lines + 1, summary.bad + 1
    elif carry:
        scan_lines([carry], summary, number)
    return summary


def cached_summary(content: Path, cache: Path, max_line_bytes: int) -> Summary:
    """The scan of an upload, from `cache` when an earlier create made it (uploads never change)."""
    try:
        return Summary.model_validate(read_json(cache))
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        pass
    summary = scan_file(content, max_line_bytes)
    atomic_write_json(cache, summary.model_dump(), durable=False)
    return summary
