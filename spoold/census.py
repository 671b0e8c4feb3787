"""How many jobs each spool folder holds, from directory listings alone (metrics gauges, `spoold status`)."""

from __future__ import annotations

import os
from pathlib import Path


def count_spool(spool_dir: Path) -> tuple[dict[str, int], float | None]:
    """Jobs per spool folder as the disk shows them (every daemon's work) and the oldest inbox mtime.

    inbox/ counts `*.jsonl` regular files (ready or not); the other folders count job
    directories. Hidden names (temp files, claims in flight) are skipped. A missing
    folder counts 0; other OSErrors (a dead NFS server) propagate.

    done/ and failed/ are counted from the listing alone (names and the file type
    the listing carries), never a per-job stat or read, so the cost does not grow
    with what is in them beyond one directory read. Only inbox/ entries (the
    queue, not the history) are stat'ed, for the oldest-job gauge.
    """
    counts: dict[str, int] = {}
    oldest: float | None = None
    inbox = 0
    for entry in _entries(spool_dir / "inbox"):
        # SPEC 2's ignored suffixes (.part, .tmp, ~ ...) cannot end in ".jsonl".
        if entry.name.startswith(".") or not entry.name.endswith(".jsonl"):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue  # claimed by someone while we looked
        inbox += 1
        oldest = mtime if oldest is None else min(oldest, mtime)
    counts["inbox"] = inbox
    for state in ("processing", "done", "failed"):
        counts[state] = sum(
            1 for e in _entries(spool_dir / state) if not e.name.startswith(".") and _is_dir(e)
        )
    return counts, oldest


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except FileNotFoundError:
        return False
