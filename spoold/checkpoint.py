"""Where a job stands, committed after each chunk so a crash resumes without loss or repeats.

Requests finish out of order (a rolling window keeps the engine busy), so the
checkpoint is a low-water mark (every line before `next_line` has its record)
plus the few lines above it that already finished (`done_above`). Results
files are append-only; their good lengths are recorded here and anything
beyond them (a torn tail from a crash) is cut on resume.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from spoold.fsutil import atomic_write_json, read_json


class Checkpoint(BaseModel):
    version: int = 1
    next_line: int = 1
    next_offset: int = 0
    done_above: list[int] = []
    output_bytes: int = 0
    errors_bytes: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    updated_at: float = 0.0

    @property
    def records(self) -> int:
        return self.succeeded + self.failed


class Progress:
    """Tracks read position, in-flight lines and finished lines between checkpoints (pure)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.read_line = checkpoint.next_line
        self.read_offset = checkpoint.next_offset
        self.done: set[int] = set(checkpoint.done_above)
        self.open: dict[int, int] = {}

    def already_done(self, line: int) -> bool:
        return line in self.done

    def read(self, line: int, end_offset: int) -> None:
        """Line `line` has been read; the next one starts at `end_offset`."""
        self.read_line = line + 1
        self.read_offset = end_offset

    def dispatched(self, line: int, offset: int) -> None:
        self.open[line] = offset

    def finished(self, line: int) -> None:
        self.open.pop(line, None)
        self.done.add(line)

    def low_water(self) -> tuple[int, int]:
        """The first line that may still lack a record, and its byte offset."""
        if self.open:
            line = min(self.open)
            return line, self.open[line]
        return self.read_line, self.read_offset

    def commit_view(self) -> tuple[int, int, list[int]]:
        """(next_line, next_offset, done_above) for a checkpoint; forgets lines below the mark."""
        line, offset = self.low_water()
        self.done = {d for d in self.done if d >= line}
        return line, offset, sorted(self.done)


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.exists():
        return Checkpoint()
    return Checkpoint.model_validate(read_json(path))


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    checkpoint.updated_at = time.time()
    atomic_write_json(path, checkpoint.model_dump())
