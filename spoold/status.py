"""`spoold status`: every job's state, model, progress, rate, age and owner, read from the disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from spoold import lease as leases
from spoold.errors import SidecarError
from spoold.fsutil import mtime_or_now, read_json
from spoold.jobdir import JobDir
from spoold.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.sidecar import parse_sidecar
from spoold.spool import Spool
from spoold.states import JobState

FINISHED_SHOWN = 20


def collect(spool: Spool, default_model: str, name: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = [_inbox_row(spool, e.name, e.yaml is not None, default_model, now) for e in spool.scan_inbox() if e.jsonl]
    for state in (JobState.PROCESSING, JobState.DONE, JobState.FAILED):
        jobs = spool.jobs(state)
        if state is not JobState.PROCESSING and name is None:
            jobs = sorted(jobs, key=lambda j: mtime_or_now(j.path))[-FINISHED_SHOWN:]
        rows.extend(_job_row(job, state, now) for job in jobs)
    if name is not None:
        rows = [r for r in rows if r["name"] == name]
    return rows


def render(rows: list[dict[str, Any]], spool: Spool) -> str:
    counts = {s.value: 0 for s in JobState}
    for row in rows:
        counts[row["state"]] += 1
    head = f"spool {spool.root}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
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
    widths = [max(len(str(row[i])) for row in table) for i in range(len(columns))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    return head + "\n" + "\n".join(lines)


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def _inbox_row(spool: Spool, name: str, has_sidecar: bool, default_model: str, now: float) -> dict[str, Any]:
    model: str | None = default_model
    status = "queued" if has_sidecar else "waiting for sidecar"
    if has_sidecar:
        try:
            model = parse_sidecar((spool.inbox / f"{name}{SIDECAR_SUFFIX}").read_bytes()).model or default_model
        except (SidecarError, OSError):
            model, status = None, "queued (invalid sidecar)"
    age = now - mtime_or_now(spool.inbox / f"{name}{INPUT_SUFFIX}")
    return _row(name, "inbox", status, model, 0, None, None, age, None)


def _job_row(job: JobDir, state: JobState, now: float) -> dict[str, Any]:
    try:
        batch = read_json(job.batch)
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
    row = _row(job.name, state.value, status, batch.get("model"), done, counts.get("total"), extra.get("rate_per_second"), now - started, node)
    row["handlers"] = {name: run.get("status") for name, run in (extra.get("handlers") or {}).items()}
    return row


def _row(name: str, state: str, status: str, model: str | None, done: int, total: int | None, rate: float | None, age: float, node: str | None) -> dict[str, Any]:
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

