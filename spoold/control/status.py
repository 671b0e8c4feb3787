"""`spoold status`: active and recent jobs' state, model, progress, rate, age and owner, read from the disk."""

from __future__ import annotations

import heapq
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spoold.errors import SidecarError
from spoold.fsutil import mtime_or_now, read_json
from spoold.job.shards.status import shard_rows
from spoold.job.sidecar import parse_sidecar
from spoold.spool import lease as leases
from spoold.spool import recent
from spoold.spool.census import SETTLE_NS, count_folder, count_spool, job_mtimes
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.names import SIDECAR_SUFFIX, is_ignored
from spoold.spool.readiness import FileStat, InboxEntry
from spoold.spool.states import JobState

RECENT_SHOWN = 20
"""Finished jobs shown per folder (done/, failed/) by default: the most recently changed."""
INBOX_SHOWN = 50
"""Waiting jobs shown by default: the oldest (their sidecars are read; the rest are only counted)."""


class WatchCache:
    """For --watch: a finished folder whose (inode, mtime) did not change keeps its recent names,
    and a waiting job whose sidecar's (size, mtime) did not change keeps its model: a refresh
    reads only what changed."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int], list[str]]] = {}
        self._sidecars: dict[str, tuple[FileStat, tuple[str | None, str]]] = {}

    def sidecar(self, name: str, stat: FileStat, read: Callable[[], tuple[str | None, str]]) -> tuple[str | None, str]:
        known = self._sidecars.get(name)
        if known is not None and known[0] == stat:
            return known[1]
        value = read()
        self._sidecars[name] = (stat, value)
        return value

    def forget_sidecars_but(self, names: set[str]) -> None:
        for name in [n for n in self._sidecars if n not in names]:
            del self._sidecars[name]

    def recent(self, folder: Path, count: int) -> list[str]:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns)
        known = self._known.get(folder)
        if known is not None and known[0] == key and time.time_ns() - st.st_mtime_ns > SETTLE_NS:
            return known[1]
        names = _recent(folder, count)
        self._known[folder] = (key, names)
        return names


def collect(
    spool: Spool,
    default_model: str,
    name: str | None = None,
    now: float | None = None,
    *,
    show_all: bool = False,
    cache: WatchCache | None = None,
) -> list[dict[str, Any]]:
    """Rows for every active job (inbox, processing) and the recent finished ones (`show_all`: every one).

    Only the finished jobs shown are read. The recent ones come from the notes
    `recent.note` leaves as jobs finish; without enough notes, from one stat
    per finished job (with `cache`, only when the folder changed), never a
    read of each.
    """
    now = time.time() if now is None else now
    if name is not None:
        return _named(spool, name, default_model, now)
    waiting = [e for e in spool.scan_inbox() if e.jsonl]
    if not show_all and len(waiting) > INBOX_SHOWN:  # the oldest, by the listing's stats alone
        waiting = heapq.nsmallest(INBOX_SHOWN, waiting, key=lambda e: (e.jsonl.mtime_ns if e.jsonl else 0, e.name))
    if cache is not None:
        cache.forget_sidecars_but({e.name for e in waiting})
    rows = [_inbox_row(spool, e, default_model, now, cache) for e in waiting]
    rows.extend(row for job in spool.jobs(JobState.PROCESSING) if (row := _job_row(job, JobState.PROCESSING, now)) is not None)
    for state in (JobState.DONE, JobState.FAILED):
        folder = spool.dir(state)
        if show_all:
            names = sorted(_names(folder))
        else:
            names = recent.recent(spool.root, state.value, RECENT_SHOWN)  # noted as they finished: no scan
            if len(names) < RECENT_SHOWN and len(names) < count_folder(folder):
                # Too few notes (a spool from an older spoold, requeues): one stat per finished job.
                names = cache.recent(folder, RECENT_SHOWN) if cache else _recent(folder, RECENT_SHOWN)
        for n in names:
            if (row := _job_row(JobDir(folder / n), state, now)) is not None:
                rows.append(row)
    return rows


def _named(spool: Spool, name: str, default_model: str, now: float) -> list[dict[str, Any]]:
    found = spool.find(name)
    if found is None:
        return []
    state, path = found
    if state is JobState.INBOX:
        entry = next((e for e in spool.scan_inbox() if e.name == name and e.jsonl), None)
        return [_inbox_row(spool, entry, default_model, now)] if entry is not None else []
    row = _job_row(JobDir(path), state, now)
    return [row] if row is not None else []


def _names(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if not is_ignored(n)]
    except FileNotFoundError:
        return []


def _recent(folder: Path, count: int) -> list[str]:
    """The `count` most recently changed job names in `folder`, newest first (a stat each, no reads)."""
    return [name for _, name in heapq.nlargest(count, ((mtime, name) for name, mtime in job_mtimes(folder)))]


def render(rows: list[dict[str, Any]], spool: Spool, counts: dict[str, int] | None = None, shown_all: bool = True) -> str:
    """The table; `counts` (from `count_jobs`) gives the folder totals when not every job is shown."""
    if counts is None:
        counts = {s.value: 0 for s in JobState}
        for row in rows:
            counts[row["state"]] += 1
    head = f"spool {spool.root}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    hidden = counts.get("done", 0) + counts.get("failed", 0) - sum(r["state"] in ("done", "failed") for r in rows)
    hidden_waiting = counts.get("inbox", 0) - sum(r["state"] == "inbox" for r in rows)
    shown = [f"the {INBOX_SHOWN} oldest waiting"] if not shown_all and hidden_waiting > 0 else []
    shown += [f"the {RECENT_SHOWN} most recent of each finished state"] if not shown_all and hidden > 0 else []
    if shown:
        head += f" (showing {' and '.join(shown)}; --all for every job)"
    if not rows:
        return head + "\nno jobs"
    columns = ["name", "state", "status", "model", "progress", "rate", "age", "node"]
    with_handlers = any(r["handlers"] for r in rows)
    if with_handlers:
        columns.append("handlers")
    table = [[c.upper() for c in columns]]
    for r in rows:
        progress = f"{r['done']}/{r['total']}" if r["total"] is not None else "-"
        if r["total"]:
            progress += f" ({100 * r['done'] // r['total']}%)"
        rate = f"{r['rate']:.1f}/s" if r.get("rate") else "-"
        line = [r["name"], r["state"], r["status"], r["model"] or "-", progress, rate, _age(r["age_seconds"]), r["node"] or "-"]
        if with_handlers:
            line.append(" ".join(f"{name}:{state}" for name, state in r["handlers"].items()) or "-")
        table.append(line)
        for s in r.get("shards") or []:  # a sharded job: one line per shard under it
            part = f"  shard {s['index']}/{s['of']}"
            shard_line = [part, "", s["status"], "", f"{s['done']}/{s['lines']}", "", "", s["node"] or "-"]
            table.append(shard_line + ([""] if with_handlers else []))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(columns))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return head + "\n" + "\n".join(lines)


def count_jobs(spool: Spool) -> dict[str, int]:
    """Jobs per folder from the listings alone (the header totals)."""
    counts, _ = count_spool(spool.root)
    return {s.value: counts.get(s.value, 0) for s in JobState}


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def _inbox_row(spool: Spool, entry: InboxEntry, default_model: str, now: float, cache: WatchCache | None = None) -> dict[str, Any]:
    assert entry.jsonl is not None
    name = entry.name

    def read() -> tuple[str | None, str]:
        try:
            return parse_sidecar((spool.inbox / f"{name}{SIDECAR_SUFFIX}").read_bytes()).model or default_model, "queued"
        except (SidecarError, OSError):
            return None, "queued (invalid sidecar)"

    model: str | None
    if entry.yaml is None:
        model, status = default_model, "waiting for sidecar"
    else:
        model, status = cache.sidecar(name, entry.yaml, read) if cache is not None else read()
    age = now - entry.jsonl.mtime_ns / 1e9
    return _row(name, "inbox", status, model, 0, None, None, age, None)


def _job_row(job: JobDir, state: JobState, now: float) -> dict[str, Any] | None:
    """None if the job left its folder while we looked (finished, pruned, requeued)."""
    try:
        batch = read_json(job.batch)
    except FileNotFoundError:
        if not job.path.is_dir():
            return None
        batch = {}
    except (OSError, ValueError):
        batch = {}
    counts = batch.get("request_counts") or {}
    extra = batch.get("spoold") or {}
    node = extra.get("node")
    status = batch.get("status", "claimed")
    if state is JobState.PROCESSING:
        try:
            lease = leases.current(job)
            node = lease.node if lease else node
            if job.cancel_requested():
                status = "cancelling"
        except OSError:
            node = node or "?"
    started = extra.get("claimed_at") or mtime_or_now(job.path)
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    row = _row(
        job.name, state.value, status, batch.get("model"), done, counts.get("total"), extra.get("rate_per_second"), now - started, node
    )
    row["handlers"] = {name: run.get("status") for name, run in (extra.get("handlers") or {}).items()}
    shards = shard_rows(job, now) if state is JobState.PROCESSING else extra.get("shards")
    if shards:
        row["shards"] = shards
        if state is JobState.PROCESSING:
            row["done"] = sum(s["done"] for s in shards)
            row["node"] = ",".join(sorted({s["node"] for s in shards if s["node"] and s["status"] == "running"})) or node
    return row


def _row(
    name: str, state: str, status: str, model: str | None, done: int, total: int | None, rate: float | None, age: float, node: str | None
) -> dict[str, Any]:
    return {"name": name, "state": state, "status": status, "model": model, "done": done, "total": total,
            "rate": rate, "age_seconds": round(max(age, 0.0), 1), "node": node, "handlers": {}}  # fmt: skip


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
