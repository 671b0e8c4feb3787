"""The validating pass: one streaming read of the input before any inference.

It counts the requests (so progress has a denominator), finds duplicate
custom_ids (which need the whole file), and decides whether the file as a
whole can run, before a GPU second is spent on it.
"""

from __future__ import annotations

import errno
import os
import time
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from hashlib import blake2b
from itertools import takewhile
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from spoold.engine.base import EngineRequest
from spoold.inputcheck import safe_opener
from spoold.job.lines import URL_KINDS, LineError, parse_raw_line, short_repr
from spoold.job.reader import MAX_LINE_BYTES, SKIP_BLOCK, RawLine, read_lines

T = TypeVar("T")
Identity = tuple[int, int]
"""A file's (device, inode): a worker reads only that file, whatever name it finds it under."""

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
    identity: Identity | None = None,
) -> ValidationSummary:
    """Stream `path` (the file of that `identity`, if given); memory does not grow with the input beyond
    8 bytes per valid line (and one line, at most `max_line_bytes`). A line's problem, whatever it is,
    is that line's error. `serves`: the line kinds the job's model answers (see `lines.parse_line`).

    Duplicate custom_ids are found without holding the ids: the first pass keeps
    a 64-bit hash of each id (8 bytes, not a ~100-byte Python string); hashes
    that occur twice are candidates, and only if there are any does a second
    pass compare the actual ids of those lines (first occurrence wins).
    `keep_going(lines_read)` is called every PROGRESS_EVERY lines (the daemon
    pings its watchdog there); returning False stops with ValidationInterrupted.
    """
    raw_lines = read_lines(path, max_line_bytes=max_line_bytes, identity=identity)
    summary, hashes = _first_pass(raw_lines, job_model, keep_going, serves)
    candidates = repeated(hashes)
    del hashes
    if candidates:
        _mark_duplicates(summary, _duplicate_lines(path, job_model, candidates, keep_going, max_line_bytes, serves, identity))
    return summary


def _first_pass(
    raw_lines: Iterable[RawLine], job_model: str, keep_going: Callable[[int], bool] | None, serves: Collection[str] | None
) -> tuple[ValidationSummary, array]:
    """The summary before duplicates, and the id hash of each valid line in order."""
    summary = ValidationSummary()
    hashes = array("Q")
    add_hash = hashes.append
    lines = invalid = 0  # counted in locals: a pydantic attribute write per line costs more than the count
    errors: list[ListedError] = []
    for parsed in _judged(raw_lines, job_model, keep_going, serves):
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
    return summary, hashes


def _judged(
    raw_lines: Iterable[RawLine], job_model: str, keep_going: Callable[[int], bool] | None, serves: Collection[str] | None
) -> Iterable[EngineRequest | LineError]:
    """Each non-blank line judged."""
    for raw in raw_lines:
        if keep_going is not None and raw.number % PROGRESS_EVERY == 0 and not keep_going(raw.number):
            raise ValidationInterrupted()
        parsed = parse_raw_line(raw, job_model, serves)
        if parsed is not None:
            yield parsed


# In worker processes (job.prevalidate): the file under whichever of its names it is, and the pass in parts.


FIND_ROUNDS = 5
"""Tries of every name before a worker gives up: a claim renames the input twice, through a staging
folder of its own, and for those milliseconds the file is under none of the names a worker knows."""


def first_found(paths: Sequence[Path], read: Callable[[Path], T]) -> T:
    """`read(path)` on the first of `paths` that holds the file: a worker process is handed the inbox
    name and the name the claim renames it to, and the claim may come before or while it opens."""
    for round_ in range(FIND_ROUNDS):
        for path in paths:
            try:
                return read(path)
            except FileNotFoundError:
                if round_ == FIND_ROUNDS - 1 and path == paths[-1]:
                    raise
        time.sleep(0.02 * (round_ + 1))
    raise AssertionError("unreachable")


def validate_found(
    paths: Sequence[Path],
    identity: Identity | None,
    job_model: str,
    max_line_bytes: int = MAX_LINE_BYTES,
    serves: Collection[str] | None = None,
) -> ValidationSummary:
    """`validate_file` of the file of `identity`, under whichever of `paths` it is."""
    return first_found(paths, lambda path: validate_file(path, job_model, None, max_line_bytes, serves, identity))


class PassPart(BaseModel):
    """What one part of a split pass found: its summary with line numbers counted from the part's first
    line, and how many lines it read (blank ones included), which numbers the next part's lines."""

    summary: ValidationSummary
    read: int


def part_bounds(path: Path, parts: int, identity: Identity | None = None) -> list[tuple[int, int]]:
    """`parts` byte ranges of `path` that start and end at line starts (fewer if lines are long): a line
    belongs to the range its first byte is in."""
    starts = [0]
    with open(path, "rb", opener=safe_opener) as fh:
        st = os.fstat(fh.fileno())
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise FileNotFoundError(errno.ENOENT, "another file has this name now", str(path))
        size = st.st_size
        for k in range(1, parts):
            cut = max(size * k // parts, starts[-1] + 1)
            if cut >= size:
                break
            fh.seek(cut - 1)  # the line holding byte cut - 1 ends the previous part
            while (block := fh.readline(SKIP_BLOCK)) and not block.endswith(b"\n"):
                pass
            if fh.tell() >= size:
                break
            starts.append(fh.tell())
    return list(zip(starts, starts[1:] + [size], strict=True))


def validate_part(
    paths: Sequence[Path],
    identity: Identity | None,
    job_model: str,
    start: int,
    end: int,
    hashes_to: Path,
    max_line_bytes: int = MAX_LINE_BYTES,
    serves: Collection[str] | None = None,
) -> PassPart:
    """The first pass over the lines starting in [start, end), numbered from 1, of the file (of `identity`)
    under whichever of `paths` it is; their id hashes go to `hashes_to`."""
    read = 0

    def in_part(path: Path) -> Iterable[RawLine]:
        nonlocal read
        for raw in takewhile(lambda raw: raw.offset < end, read_lines(path, start, max_line_bytes=max_line_bytes, identity=identity)):
            read = raw.number
            yield raw

    summary, hashes = first_found(paths, lambda path: _first_pass(in_part(path), job_model, None, serves))
    with open(hashes_to, "wb") as fh:
        hashes.tofile(fh)
    return PassPart(summary=summary, read=read)


def merge_parts(
    paths: Sequence[Path],
    identity: Identity | None,
    job_model: str,
    parts: list[PassPart],
    hash_files: list[Path],
    max_line_bytes: int = MAX_LINE_BYTES,
    serves: Collection[str] | None = None,
) -> ValidationSummary:
    """The whole file's summary from its parts in order, as `validate_file` would give it: line numbers
    counted from the file's start, duplicates across parts found (the second pass, if any, over the file)."""
    summary = ValidationSummary()
    first_line = 0
    for part in parts:
        s = part.summary
        summary.lines += s.lines
        summary.invalid += s.invalid
        summary.endpoint = summary.endpoint or s.endpoint
        room = MAX_LISTED_ERRORS - len(summary.errors)
        summary.errors += [e.model_copy(update={"line": (e.line or 0) + first_line}) for e in s.errors[:room]]
        first_line += part.read
    summary.valid = summary.lines - summary.invalid
    hashes = array("Q")
    for file in hash_files:
        hashes.frombytes(file.read_bytes())
    candidates = repeated(hashes)
    del hashes
    if candidates:
        found = first_found(paths, lambda path: _duplicate_lines(path, job_model, candidates, None, max_line_bytes, serves, identity))
        _mark_duplicates(summary, found)
    return summary


def _id_hash(custom_id: str) -> int:
    """The same in every process (the parts of a split pass run in several): not `hash()`, whose seed is per process."""
    return int.from_bytes(blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


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
    identity: Identity | None = None,
) -> list[LineError]:
    """Second pass, only over lines whose id hash repeats: exact comparison of the ids."""
    first: dict[str, int] = {}
    found = []
    raw_lines = read_lines(path, max_line_bytes=max_line_bytes, identity=identity)
    for parsed in _judged(raw_lines, job_model, keep_going, serves):
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
