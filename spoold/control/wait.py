"""`spoold submit --wait`: follow one job until it ends, with a progress bar, then say where its results are.

The job is followed by its input file's identity (device, inode), which the
claim's renames keep, so a job renamed `NAME.2` (a `done/NAME` already
existed) is still found. On a terminal the bar is tqdm's (requests done of
total, rate, ETA, redrawn in place); otherwise one plain line per change, at
most every few seconds, so logs and CI output stay readable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from spoold.errors import SpooldError
from spoold.spool.layout import Spool
from spoold.spool.names import INPUT_SUFFIX

LOST_AFTER_SECONDS = 300.0
"""Not in the inbox, processing/, done/ or failed/ for this long: someone moved it away."""


@dataclass(frozen=True)
class Sighting:
    """Where the job is now: `state` inbox | processing | done | failed | unknown, and its batch object if any."""

    state: str
    path: Path | None = None
    batch: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed") and self.batch is not None

    @property
    def status(self) -> str:
        if self.batch is not None:
            return str(self.batch.get("status", "?"))
        return {"inbox": "queued", "processing": "claimed", "unknown": "being claimed"}.get(self.state, self.state)

    def counts(self) -> tuple[int, int | None]:
        """(requests done, total or None while unknown)."""
        counts = (self.batch or {}).get("request_counts") or {}
        total = counts.get("total") or None
        return (counts.get("completed") or 0) + (counts.get("failed") or 0), total


def locate(spool: Spool, name: str, identity: tuple[int, int]) -> Sighting:
    """Find the job whose input has `identity`: inbox/NAME.jsonl, or STATE/NAME[.k]/input.jsonl."""
    if _same(spool.inbox / f"{name}{INPUT_SUFFIX}", identity):
        return Sighting("inbox", spool.inbox / f"{name}{INPUT_SUFFIX}")
    for state in ("processing", "done", "failed"):
        folder = spool.root / state
        try:
            names = [e.name for e in os.scandir(folder) if _is_variant(e.name, name)]
        except FileNotFoundError:
            continue
        for entry in names:
            job = folder / entry
            if _same(job / "input.jsonl", identity):
                return Sighting(state, job, _read_batch(job / "batch.json"))
    return Sighting("unknown")


def outcome(sighting: Sighting) -> tuple[int, list[str]]:
    """Exit status and the closing lines for a finished job (pure)."""
    batch, job = sighting.batch or {}, sighting.path
    assert job is not None
    status = str(batch.get("status"))
    counts = batch.get("request_counts") or {}
    seconds = ((batch.get("spoold") or {}).get("durations") or {}).get("running_seconds")
    took = f" in {_duration(seconds)}" if seconds else ""
    head = f"{job.name}: {status}: {counts.get('completed', 0)} of {counts.get('total', 0)} requests succeeded, {counts.get('failed', 0)} failed{took}"
    lines = [head]
    errors = (batch.get("errors") or {}).get("data") or []
    if status == "failed" and errors:
        lines.append(f"reason: {errors[0].get('message')}")
    lines += [f"results: {job / 'output.jsonl'}", f"errors:  {job / 'errors.jsonl'}", f"status:  {job / 'batch.json'}"]
    return (0 if status == "completed" else 1), lines


def progress_line(name: str, sighting: Sighting, rate: float | None) -> str:
    """One plain progress line (pure)."""
    done, total = sighting.counts()
    text = f"{name}: {sighting.status}"
    if total:
        text += f", {done}/{total} requests ({100 * done // total}%)"
        if rate:
            text += f", {rate:.1f} req/s, ETA {_duration((total - done) / rate)}"
    return text


def wait_for_job(
    spool: Spool,
    name: str,
    identity: tuple[int, int],
    *,
    out: TextIO | None = None,
    interval: float = 0.5,
    plain_every: float = 5.0,
) -> int:
    """Follow the job to its end; returns 0 if it completed, 1 if it failed or was cancelled."""
    out = out or sys.stdout
    view: _View = _Bar(name, out) if out.isatty() else _Lines(name, out, plain_every)
    unseen_since: float | None = None
    try:
        while True:
            sighting = locate(spool, name, identity)
            if sighting.finished:
                view.show(sighting)  # the bar ends full
                break
            if sighting.state == "unknown":
                unseen_since = unseen_since or time.monotonic()
                if time.monotonic() - unseen_since > LOST_AFTER_SECONDS:
                    raise SpooldError(f"lost track of job {name}: its input is no longer in {spool.root}")
            else:
                unseen_since = None
            view.show(sighting)
            time.sleep(interval)
    finally:
        view.close()
    code, lines = outcome(sighting)
    for line in lines:
        print(line, file=out)
    return code


class _View:
    def show(self, sighting: Sighting) -> None: ...

    def close(self) -> None: ...


class _Lines(_View):
    """Not a terminal: a line when the status changes, and progress at most every `every` seconds."""

    def __init__(self, name: str, out: TextIO, every: float) -> None:
        self._name, self._out, self._every = name, out, every
        self._last: tuple[str, int] | None = None
        self._last_time = 0.0
        self._rate = _Rate()

    def show(self, sighting: Sighting) -> None:
        if sighting.finished:
            return  # the closing lines say it all
        done, _ = sighting.counts()
        rate = self._rate.update(done, sighting.batch)
        now = time.monotonic()
        key = (sighting.status, done)
        if key == self._last or (self._last and key[0] == self._last[0] and now - self._last_time < self._every):
            return
        self._last, self._last_time = key, now
        print(progress_line(self._name, sighting, rate), file=self._out, flush=True)


class _Bar(_View):
    """A terminal: tqdm's bar, redrawn in place, with the job's status beside it."""

    def __init__(self, name: str, out: TextIO) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=name, total=None, unit="req", file=out, dynamic_ncols=True, smoothing=0.1)

    def show(self, sighting: Sighting) -> None:
        done, total = sighting.counts()
        if total and self._bar.total != total:
            self._bar.total = total
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        self._bar.set_postfix_str(sighting.status, refresh=True)

    def close(self) -> None:
        self._bar.close()


class _Rate:
    """Requests per second: the daemon's own figure from batch.json, else measured here between looks."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def update(self, done: int, batch: dict[str, Any] | None) -> float | None:
        live = ((batch or {}).get("spoold") or {}).get("rate_per_second")
        now = time.monotonic()
        if self._first is None or done < self._first[1]:
            self._first = (now, done)
        if live:
            return float(live)
        elapsed = now - self._first[0]
        return (done - self._first[1]) / elapsed if elapsed > 1 and done > self._first[1] else None


def _same(path: Path, identity: tuple[int, int]) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == identity


def _is_variant(entry: str, name: str) -> bool:
    """NAME itself or the unique NAME.k a clash gives it."""
    return entry == name or (entry.startswith(name + ".") and entry[len(name) + 1 :].isdigit())


def _read_batch(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written yet, or replaced while read
    return data if isinstance(data, dict) else None


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
