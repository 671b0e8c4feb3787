"""What is waiting in inbox/, kept between looks so taking a job costs the same with 10 or 100,000 waiting.

Per upload it remembers the files' stats and since when they are unchanged,
the parsed sidecar (priority, model) and, once decided, the verdict; ready
jobs sit in a `ReadyQueue`. It learns of changes from three sources:
- `touch(names)`: the watcher's inotify hints, one stat per file named;
- `due(now)`: uploads whose settle (or orphan) time has come are looked at
  again at that very moment, not at the next poll;
- `rescan(now)`: a full listing (linear; the daemon runs it every
  `poll_interval` in poll mode, and as a safety net in inotify mode), which
  also catches anything inotify missed (queue overflow, NFS).
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Callable, Iterable

from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.readiness import FileStat, InboxEntry, ReadinessRule, ReadinessTracker, Verdict
from spoold.spool.scheduler import Candidate, ReadyQueue
from spoold.spool.layout import Spool

Peek = Callable[[str], tuple[int, str | None]]
"""name -> (priority, model) from its sidecar in the inbox (defaults without one); model None when it is invalid."""
Arrived = Callable[[str, int], None]
"""(name, input size): an upload's sidecar, its commit marker, is there (it may still change until settled)."""


class Intake:
    def __init__(self, spool: Spool, rule: ReadinessRule, peek: Peek, arrived: Arrived | None = None) -> None:
        self.spool = spool
        self._uploads = ReadinessTracker(rule.settle, rule.orphan, rule.require_sidecar)
        self._peek = peek
        self._arrived = arrived
        self._due: list[tuple[float, str]] = []
        self._inbox = str(spool.inbox) + os.sep  # stats by plain string: no Path objects per look
        self.ready = ReadyQueue()
        self.verdicts: dict[str, Verdict] = {}

    def __len__(self) -> int:
        return len(self._uploads)

    def waiting(self) -> tuple[int, float | None]:
        """Jobs in the inbox (ready or not) and the oldest input's mtime, for the spool gauges."""
        mtimes = [e.jsonl.mtime_ns for e in self._uploads.entries() if e.jsonl is not None]
        return len(mtimes), (min(mtimes) / 1e9 if mtimes else None)

    # ---- sources of change ---------------------------------------------------------------

    def touch(self, names: Iterable[str], now: float) -> None:
        for name in set(names):
            self._observe(name, self._stat(name), now)

    def rescan(self, now: float) -> None:
        current = {e.name: e for e in self.spool.scan_inbox()}
        for name in [e.name for e in self._uploads.entries() if e.name not in current]:
            self._observe(name, None, now)
        for name, entry in current.items():
            self._observe(name, entry, now)

    def due(self, now: float, limit: int = 200) -> None:
        """Look again at uploads whose time has come; at most `limit` per call, so thousands of
        uploads settling at once (a daemon starting on a deep inbox) never stall the loop."""
        while self._due and self._due[0][0] <= now and limit > 0:
            limit -= 1
            _, name = heapq.heappop(self._due)
            if name in self._uploads and name not in self.ready:
                self._observe(name, self._stat(name), now)

    def overdue(self, now: float) -> bool:
        """Uploads whose time to be decided has come are still undecided (more than `due` takes in one step)."""
        deadline = self.next_deadline()
        return deadline is not None and deadline <= now

    def next_deadline(self) -> float | None:
        """The earliest moment a pending upload may be decided."""
        while self._due and (self._due[0][1] not in self._uploads or self._due[0][1] in self.ready):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def taken(self, name: str) -> None:
        """Claimed (or gone): forget it; a new upload of the same name starts afresh."""
        self._uploads.forget(name)
        self.ready.discard(name)
        self.verdicts.pop(name, None)

    # ---- the rule --------------------------------------------------------------------------

    def _observe(self, name: str, entry: InboxEntry | None, now: float) -> None:
        if entry is None or (entry.jsonl is None and entry.yaml is None):
            self.taken(name)
            return
        changed, verdict = self._uploads.see(entry, now)
        if changed:
            self.ready.discard(name)
            self.verdicts.pop(name, None)
            needed = self._uploads.needed(entry)
            if needed is not None:
                heapq.heappush(self._due, (now + needed, name))
            if self._arrived is not None and entry.jsonl is not None and entry.yaml is not None:
                self._arrived(name, entry.jsonl.size)
        if name in self.ready or verdict is None:
            return
        priority, model = self._peek(name)
        assert entry.jsonl is not None
        if verdict is Verdict.NO_SIDECAR:
            model = None  # fails fast, no engine
        self.ready.push(Candidate(name, priority, entry.jsonl.mtime_ns / 1e9, model, entry.jsonl.size))
        self.verdicts[name] = verdict

    def _stat(self, name: str) -> InboxEntry | None:
        files = [self._file_stat(name + suffix) for suffix in (INPUT_SUFFIX, SIDECAR_SUFFIX)]
        return InboxEntry(name, files[0], files[1]) if files[0] or files[1] else None

    def _file_stat(self, filename: str) -> FileStat | None:
        try:
            st = os.stat(self._inbox + filename, follow_symlinks=False)
        except OSError:
            return None
        return FileStat(st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
