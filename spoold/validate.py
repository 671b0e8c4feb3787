"""The validating pass: one streaming read of the input before any inference.

It counts the requests (so progress has a denominator), finds duplicate
custom_ids (which need the whole file), and decides whether the file as a
whole can run, before a GPU second is spent on it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from pydantic import BaseModel

from spoold.lines import LineError, parse_line
from spoold.reader import read_lines

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


def duplicate_error(line: int, custom_id: str) -> LineError:
    return LineError(line, "duplicate_custom_id", f"custom_id {custom_id!r} already used on an earlier line", custom_id)


def validate_file(
    path: Path, job_model: str, keep_going: Callable[[int], bool] | None = None, serves: Collection[str] | None = None
) -> ValidationSummary:
    """Stream `path`; memory grows with the number of distinct custom_ids only.

    `serves`: the line kinds the job's model answers (see `lines.parse_line`).

    `keep_going(lines_read)` is called every PROGRESS_EVERY lines (the daemon
    pings its watchdog there); returning False stops with ValidationInterrupted.
    """
    summary = ValidationSummary()
    seen: set[str] = set()
    for raw in read_lines(path):
        if keep_going is not None and raw.number % PROGRESS_EVERY == 0 and not keep_going(raw.number):
            raise ValidationInterrupted()
        parsed = parse_line(raw.data, raw.number, job_model, unterminated=raw.unterminated, serves=serves)
        if parsed is None:
            continue
        summary.lines += 1
        if not isinstance(parsed, LineError) and parsed.custom_id in seen:
            summary.duplicates.append(raw.number)
            parsed = duplicate_error(raw.number, parsed.custom_id)
        if isinstance(parsed, LineError):
            summary.invalid += 1
            if len(summary.errors) < MAX_LISTED_ERRORS:
                summary.errors.append(ListedError(code=parsed.code, message=parsed.message, line=parsed.line))
            continue
        seen.add(parsed.custom_id)
        summary.valid += 1
    return summary


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
            return (f"{summary.invalid} of {summary.lines} lines are invalid ({ratio:.0%}), "
                    f"more than max_error_ratio {max_error_ratio:g}")
    return None
