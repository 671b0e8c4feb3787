"""How many jobs each spool folder holds, from directory listings alone (metrics gauges, `spoold status`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from spoold.spool.names import IGNORED_SUFFIXES  # the rule of names.is_ignored, inlined: called 100,000 times

LISTED_STATES = ("processing", "done", "failed")
InboxView = Callable[[], tuple[int, float | None]]
"""(jobs waiting, oldest input's mtime) as someone already knows them."""
SETTLE_NS = 2_000_000_000
"""A folder changed this recently is listed again next time: coarse mtimes (NFS, 1-2 s) could hide a second change."""


class SpoolCensus:
    """`count_spool` for a daemon that counts every few seconds: a folder is listed again only when it changed.

    A directory's mtime changes whenever an entry is added, removed or renamed
    in or out, so an unchanged (inode, mtime) means an unchanged count: an idle
    daemon over 100,000 finished jobs does three stats per refresh, not three
    listings. On NFS the attribute cache can delay a change by up to `acdirmax`.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, int]] = {}
        """state -> (inode, mtime_ns, count) of its last listing."""

    def count(self, spool_dir: Path, inbox_view: InboxView | None = None) -> tuple[dict[str, int], float | None]:
        """`inbox_view`: the daemon's own picture of the inbox (its intake), so a deep inbox is not stat'ed again."""
        inbox, oldest = inbox_view() if inbox_view is not None else count_inbox(Path(spool_dir) / "inbox")
        counts = {"inbox": inbox}
        now_ns = time.time_ns()
        for state in LISTED_STATES:
            folder = Path(spool_dir) / state
            try:
                st = os.stat(folder)
            except FileNotFoundError:
                counts[state] = 0
                self._known.pop(state, None)
                continue
            known = self._known.get(state)
            if known is not None and known[:2] == (st.st_ino, st.st_mtime_ns):
                counts[state] = known[2]
                continue
            counts[state] = count_folder(folder)
            if now_ns - st.st_mtime_ns > SETTLE_NS:
                self._known[state] = (st.st_ino, st.st_mtime_ns, counts[state])
            else:
                self._known.pop(state, None)
        return counts, oldest


def count_spool(spool_dir: Path) -> tuple[dict[str, int], float | None]:
    """Jobs per spool folder as the disk shows them (every daemon's work) and the oldest inbox mtime.

    inbox/ counts `*.jsonl` regular files (ready or not); the other folders count
    names. Hidden names (temp files, claims in flight) are skipped. A missing
    folder counts 0; other OSErrors (a dead NFS server) propagate.

    processing/, done/ and failed/ are counted from the names in one listing,
    never a per-job stat or read. Only inbox/ entries (the queue, not the
    history) are stat'ed, for the oldest-job gauge.
    """
    inbox, oldest = count_inbox(Path(spool_dir) / "inbox")
    counts = {"inbox": inbox}
    for state in LISTED_STATES:
        counts[state] = count_folder(Path(spool_dir) / state)
    return counts, oldest


def count_inbox(inbox_dir: Path) -> tuple[int, float | None]:
    """`*.jsonl` regular files waiting (ready or not), and the oldest one's mtime."""
    oldest: float | None = None
    inbox = 0
    for entry in _entries(inbox_dir):
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
    return inbox, oldest


def count_folder(folder: Path) -> int:
    """Jobs in a state folder: its names, from one listing, hidden ones (staged claims, temp files) skipped.

    Names only (no per-entry type check): a stray file someone left in done/
    counts as a job, which is the price of not touching 100,000 entries.
    """
    try:
        return sum(1 for name in os.listdir(folder) if not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES))
    except FileNotFoundError:
        return 0


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def job_mtimes(folder: Path, dirs_only: bool = False) -> list[tuple[str, float]]:
    """(name, mtime) of each job in a state folder: one stat per entry, no reads; hidden names
    skipped, entries removed while we look ignored, a missing folder empty."""
    found = []
    for entry in _entries(folder):
        if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if dirs_only and not entry.is_dir(follow_symlinks=False):
                continue
        except FileNotFoundError:
            continue  # pruned, requeued or renamed while we looked
        found.append((entry.name, mtime))
    return found
