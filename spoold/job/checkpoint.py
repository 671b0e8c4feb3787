"""Where a job stands, committed after each chunk so a crash resumes without loss or repeats.

Requests finish out of order (a rolling window keeps the engine busy), so the
checkpoint is a low-water mark (every line before `next_line` has its record)
plus the few lines above it that already finished (`done_above`). Results
files are append-only; their good lengths are recorded here and anything
beyond them (a torn tail from a crash) is cut on resume.

Fencing: each lease generation writes its own result segments and its own
checkpoint file (`checkpoint.<gen>.json`; segments.py). A checkpoint names the
good lengths of the earlier generations' segments it inherited (`inherited`),
so a daemon frozen past its lease that wakes and writes can only touch files
of its own, superseded generation: the highest-numbered checkpoint decides
what the results are, and nothing it does not name is ever merged.
"""

from __future__ import annotations

import os
import re
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
    gen: int = 0
    """The lease generation that wrote this checkpoint; its segments are `output_bytes`/`errors_bytes` long."""
    inherited: dict[int, tuple[int, int]] = {}
    """Good (output, errors) lengths of earlier generations' segments, frozen when this generation took over."""
    outcome: str | None = None
    """Set on a shard's last checkpoint: completed | cancelled | failed (with `reason`)."""
    reason: str | None = None

    @property
    def records(self) -> int:
        return self.succeeded + self.failed

    def segments(self) -> dict[int, tuple[int, int]]:
        """Every generation's segment this checkpoint names, with its good lengths."""
        return {**self.inherited, self.gen: (self.output_bytes, self.errors_bytes)}

    def carried_to(self, gen: int) -> Checkpoint:
        """This checkpoint as generation `gen` starts from it: a new, empty segment of its own."""
        if gen == self.gen:
            return self.model_copy()
        inherited = {g: sizes for g, sizes in self.segments().items() if sizes != (0, 0)}
        return self.model_copy(
            update={"gen": gen, "inherited": inherited, "output_bytes": 0, "errors_bytes": 0, "outcome": None, "reason": None}
        )


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


LEGACY = "checkpoint.json"
"""Written by spoold before per-generation checkpoints: generation 0, results in the top-level files."""
_NAME = re.compile(r"^checkpoint\.(\d+)\.json$")


def checkpoint_path(state: Path, gen: int) -> Path:
    return state / (LEGACY if gen == 0 else f"checkpoint.{gen}.json")


def latest_gen(state: Path) -> int | None:
    """The highest generation with a checkpoint in `state`, or None."""
    try:
        names = os.listdir(state)
    except FileNotFoundError:
        return None
    gens = [int(m.group(1)) for m in map(_NAME.match, names) if m]
    if gens:
        return max(gens)
    return 0 if LEGACY in names else None


def load_checkpoint(state: Path, initial: Checkpoint | None = None) -> Checkpoint:
    """The highest generation's checkpoint in the state folder `state`; `initial` (or a fresh one) if none."""
    gen = latest_gen(state)
    if gen is None:
        return initial.model_copy() if initial is not None else Checkpoint()
    checkpoint = Checkpoint.model_validate(read_json(checkpoint_path(state, gen)))
    checkpoint.gen = gen
    return checkpoint


def save_checkpoint(state: Path, checkpoint: Checkpoint) -> None:
    """Commit `checkpoint` as its generation's file; the first save of a generation removes older ones."""
    checkpoint.updated_at = time.time()
    path = checkpoint_path(state, checkpoint.gen)
    first = not path.exists()
    atomic_write_json(path, checkpoint.model_dump())
    if first:  # the older ones are superseded (a stale owner may still write its own: never read again)
        for name in os.listdir(state):
            m = _NAME.match(name)
            if name != path.name and (name == LEGACY or (m and int(m.group(1)) < checkpoint.gen)):
                _remove_quietly(state / name)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
