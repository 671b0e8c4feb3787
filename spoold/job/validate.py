"""The validating pass: one streaming read of the input before any inference.

It counts the requests (so progress has a denominator), finds duplicate
custom_ids (which need the whole file), and decides whether the file as a
whole can run, before a GPU second is spent on it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from spoold.engine.base import EngineRequest
from spoold.job.lines import URL_KINDS, LineError, parse_raw_line, short_repr
from spoold.job.reader import MAX_LINE_BYTES, RawLine, read_lines

MAX_LISTED_ERRORS = 20
PROGRESS_EVERY = 10_000


class ValidationInterrupted(Exception):
    """The caller asked to stop (SIGTERM) part-way; the pass is simply redone later."""


class ListedError(BaseModel):
    code: str
    message: str
    line: int | None = None


class ValidationSummary(BaseModel):
    lines: int = 0
    """Non-blank lines: each will get exactly one record."""
    valid: int = 0
    invalid: int = 0
    duplicates: list[int] = []
    """Line numbers whose custom_id appeared on an earlier line."""
    errors: list[ListedError] = []
    """The first few line errors, for batch.json and `spoold validate`."""
    endpoint: str | None = None
    """The url of the first valid request: batch.json's `endpoint`."""


def duplicate_error(line: int, custom_id: str) -> LineError:
    return LineError(line, "duplicate_custom_id", f"custom_id {short_repr(custom_id)} already used on an earlier line", custom_id)


def judge(
    raw: RawLine, job_model: str, duplicates: frozenset[int], serves: Collection[str] | None = None
) -> EngineRequest | LineError | None:
    """One input line as the validating pass judged it: later duplicates of a custom_id are errors."""
    parsed = parse_raw_line(raw, job_model, serves)
    if isinstance(parsed, EngineRequest) and raw.number in duplicates:
        return duplicate_error(raw.number, parsed.custom_id)
    return parsed


def validate_file(
    path: Path,
    job_model: str,
    keep_going: Callable[[int], bool] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    serves: Collection[str] | None = None,
) -> ValidationSummary:
    """Stream `path`; memory does not grow with the input beyond 8 bytes per valid line (and one
        line, at most `max_line_bytes`). A line's problem, whatever it is, is that line's error.
    `serves`: the line kinds the job's model answers (see `lines.parse_line`).

        Duplicate custom_ids are found without holding the ids: the first pass keeps
        a 64-bit hash of each id (8 bytes, not a ~100-byte Python string); hashes
        that occur twice are candidates, and only if there are any does a second
        pass compare the actual ids of those lines (first occurrence wins).
        `keep_going(lines_read)` is called every PROGRESS_EVERY lines (the daemon
        pings its watchdog there); returning False stops with ValidationInterrupted.
    """
    summary = ValidationSummary()
    hashes = array("Q")
    add_hash = hashes.append
    lines = invalid = 0  # counted in locals: a pydantic attribute write per line costs more than the count
    errors: list[ListedError] = []
    for parsed in _parsed_lines(path, job_model, keep_going, max_line_bytes, serves):
        lines += 1
        if isinstance(parsed, LineError):
            invalid += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(ListedError(code=parsed.code, message=parsed.message, line=parsed.line))
            continue
        if summary.endpoint is None:
            summary.endpoint = next(url for url, kind in URL_KINDS.items() if kind == parsed.kind)
        add_hash(_id_hash(parsed.custom_id))
    summary.lines, summary.invalid, summary.valid, summary.errors = lines, invalid, lines - invalid, errors
    candidates = repeated(hashes)
    del hashes
    if candidates:
        _mark_duplicates(summary, _duplicate_lines(path, job_model, candidates, keep_going, max_line_bytes, serves))
    return summary


def _parsed_lines(
    path: Path, job_model: str, keep_going: Callable[[int], bool] | None, max_line_bytes: int, serves: Collection[str] | None
) -> Iterable[EngineRequest | LineError]:
    for raw in read_lines(path, max_line_bytes=max_line_bytes):
        if keep_going is not None and raw.number % PROGRESS_EVERY == 0 and not keep_going(raw.number):
            raise ValidationInterrupted()
        parsed = parse_raw_line(raw, job_model, serves)
        if parsed is not None:
            yield parsed


_MASK = 0xFFFF_FFFF_FFFF_FFFF


def _id_hash(custom_id: str) -> int:
    return hash(custom_id) & _MASK  # one process, one pass pair: the per-process seed is fine


def repeated(hashes: array) -> set[int]:
    """Hash values that occur more than once (pure; sorts `hashes` in place)."""
    if len(hashes) < 2:
        return set()
    values = np.frombuffer(hashes, dtype=np.uint64)
    values.sort()
    same = values[1:] == values[:-1]
    return set(values[1:][same].tolist()) if same.any() else set()


def _duplicate_lines(
    path: Path,
    job_model: str,
    candidates: set[int],
    keep_going: Callable[[int], bool] | None,
    max_line_bytes: int,
    serves: Collection[str] | None,
) -> list[LineError]:
    """Second pass, only over lines whose id hash repeats: exact comparison of the ids."""
    first: dict[str, int] = {}
    found = []
    for parsed in _parsed_lines(path, job_model, keep_going, max_line_bytes, serves):
        if isinstance(parsed, LineError) or _id_hash(parsed.custom_id) not in candidates:
            continue
        if parsed.custom_id in first:
            found.append(duplicate_error(parsed.line, parsed.custom_id))
        else:
            first[parsed.custom_id] = parsed.line
    return found


def _mark_duplicates(summary: ValidationSummary, duplicates: list[LineError]) -> None:
    summary.duplicates = [d.line for d in duplicates]
    summary.valid -= len(duplicates)
    summary.invalid += len(duplicates)
    listed = summary.errors + [ListedError(code=d.code, message=d.message, line=d.line) for d in duplicates[:MAX_LISTED_ERRORS]]
    summary.errors = sorted(listed, key=lambda e: e.line or 0)[:MAX_LISTED_ERRORS]


def fatal_reason(summary: ValidationSummary, max_error_ratio: float | None) -> str | None:
    """Why the file as a whole cannot run, in one sentence; None if it can (pure)."""
    if summary.lines == 0:
        return "the input file has no requests (it is empty or all lines are blank)"
    if summary.valid == 0:
        first = summary.errors[0] if summary.errors else None
        example = f"; line {first.line}: {first.message}" if first else ""
        return f"no valid request among {summary.lines} lines{example}"
    if max_error_ratio is not None:
        ratio = summary.invalid / summary.lines
        if ratio > max_error_ratio:
            return f"{summary.invalid} of {summary.lines} lines are invalid ({ratio:.0%}), more than max_error_ratio {max_error_ratio:g}"
    return None
