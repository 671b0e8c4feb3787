"""Stream an input file line by line with byte offsets, never loading it whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spoold.inputcheck import safe_opener


@dataclass(frozen=True)
class RawLine:
    number: int
    offset: int
    end: int
    data: bytes
    unterminated: bool


def read_lines(path: Path, start_offset: int = 0, start_line: int = 1) -> Iterator[RawLine]:
    with open(path, "rb", opener=safe_opener) as fh:  # never a symlink, FIFO or second name
        fh.seek(start_offset)
        offset, number = start_offset, start_line
        for data in fh:
            end = offset + len(data)
            yield RawLine(number, offset, end, data, not data.endswith(b"\n"))
            offset, number = end, number + 1
