"""Where a batch's job is in the spool, and how many requests a key has waiting (reads only)."""

from __future__ import annotations

import os
from pathlib import Path

from spoold.api.area import ApiArea
from spoold.api.batches import records
from spoold.fsutil import read_json
from spoold.spool.layout import Spool
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.states import JobState

FINAL = (JobState.DONE, JobState.FAILED)
LOOKS = 3
"""A job only moves forward (inbox, staged claim, processing, done/failed), and each look checks the places
in that order: a job is missed only if it moves as fast as the look, so absent from every one of three looks is absent."""
_final_seen: set[str] = set()
"""Batches this process saw finished: finished is forever (until pruned), so they are never looked up again to count a queue."""


def locate(spool: Spool, name: str) -> tuple[JobState, Path] | None:
    """(state, path) of job `name`: inbox (its .jsonl), processing/done/failed (its folder)."""
    for _ in range(LOOKS):
        found = _look(spool, name)
        if found is not None:
            return found
    return None


def _look(spool: Spool, name: str) -> tuple[JobState, Path] | None:
    inbox = spool.inbox / f"{name}{INPUT_SUFFIX}"
    if inbox.exists():
        return JobState.INBOX, inbox
    if _staged(spool, name):
        return JobState.PROCESSING, spool.processing / name
    for state in (JobState.PROCESSING, JobState.DONE, JobState.FAILED):
        path = spool.dir(state) / name
        if path.is_dir():
            return state, path
    return None


def _staged(spool: Spool, name: str) -> bool:
    """A claim in flight (`processing/.claim-*/` naming `name`)."""
    for staging in spool.staged_claims():
        try:
            if read_json(staging / ".spoold" / "claimer.json").get("name") == name:
                return True
        except (OSError, ValueError):
            continue
    return False


def job_exists(spool: Spool, name: str) -> bool:
    """Whether the job was committed: its sidecar in the inbox, or the job anywhere past it."""
    for _ in range(LOOKS):
        if (spool.inbox / f"{name}{SIDECAR_SUFFIX}").exists():
            return True
        found = _look(spool, name)
        if found is not None and found[0] is not JobState.INBOX:
            return True
    return False


def queued_requests(area: ApiArea, owner: str) -> int:
    """Requests in `owner`'s batches that have not finished (inbox or processing)."""
    total = 0
    for record in records.all_records(area):
        if record.owner != owner or record.id in _final_seen:
            continue
        found = locate(area.spool, record.id)
        if found is None:
            if not os.path.exists(area.spool.inbox / f"{record.id}{SIDECAR_SUFFIX}"):
                continue
        elif found[0] in FINAL:
            _final_seen.add(record.id)
            continue
        total += record.lines
    return total
