"""Stream an input file line by line with byte offsets, never loading it whole, nor one line past a limit."""

from __future__ import annotations

import errno
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spoold.inputcheck import MAX_LINE_BYTES, safe_opener

__all__ = ["MAX_LINE_BYTES", "RawLine", "read_lines"]

SKIP_BLOCK = 64 << 10
"""Bytes read at a time while skipping the rest of a line that is too long."""
READ_BUFFER = 256 << 10
"""Bytes read from the file at a time: each read releases the GIL, which the job I/O thread may keep for a while."""


@dataclass(frozen=True)
class RawLine:
    number: int
    offset: int
    end: int
    """Offset just past this line (its newline included): where the next line starts."""
    data: bytes
    """The line's bytes with its newline; empty for a line over the limit (`too_long`)."""
    unterminated: bool
    too_long: int | None = None
    """For a line longer than the limit: that limit (its bytes were skipped, never held whole)."""

    @property
    def size(self) -> int:
        """The line's length in bytes, its newline not counted."""
        return self.end - self.offset - (0 if self.unterminated else 1)


def read_lines(
    path: Path, start_offset: int = 0, start_line: int = 1, max_line_bytes: int = MAX_LINE_BYTES, identity: tuple[int, int] | None = None
) -> Generator[RawLine, None, None]:
    """Lines from `start_offset` on. A line of more than `max_line_bytes` bytes (its newline not
    counted) comes back as a `too_long` RawLine with its exact offsets; memory stays bounded by
    the limit whatever the file holds. `identity` (device, inode): the file opened must be that
    one, else FileNotFoundError (another file took the name)."""
    with open(path, "rb", buffering=READ_BUFFER, opener=safe_opener) as fh:  # never a symlink, FIFO or second name
        if identity is not None and (st := os.fstat(fh.fileno())) and (st.st_dev, st.st_ino) != identity:
            raise FileNotFoundError(errno.ENOENT, "another file has this name now", str(path))
        fh.seek(start_offset)
        offset, number = start_offset, start_line
        while True:
            data = fh.readline(max_line_bytes + 1)
            if not data:
                return
            if len(data) > max_line_bytes and not data.endswith(b"\n"):  # max + 1 bytes, no newline yet
                skipped, terminated = _skip_rest(fh)
                end = offset + len(data) + skipped
                yield RawLine(number, offset, end, b"", not terminated, too_long=max_line_bytes)
            else:
                end = offset + len(data)
                yield RawLine(number, offset, end, data, not data.endswith(b"\n"))
            offset, number = end, number + 1


def _skip_rest(fh: BinaryIO) -> tuple[int, bool]:
    """Read past the rest of the current line in bounded blocks: bytes skipped, and whether a newline ended it."""
    skipped = 0
    while True:
        block = fh.readline(SKIP_BLOCK)
        skipped += len(block)
        if not block or block.endswith(b"\n"):
            return skipped, bool(block)
