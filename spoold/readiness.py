"""When is an inbox upload finished? (SPEC section 2) Pure: stats and the time are passed in.

A job is ready when NAME.jsonl and NAME.yaml both exist and neither changed
(size, mtime) for `settle` seconds: the sidecar, uploaded last, is the commit
marker. A lone NAME.jsonl is decided after `orphan` seconds of stillness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class InboxEntry:
    name: str
    jsonl: FileStat | None
    yaml: FileStat | None


class Verdict(str, Enum):
    READY = "ready"  # both files present and still
    ORPHAN = "orphan"  # lone .jsonl, still long enough, run with default metadata
    NO_SIDECAR = "no_sidecar"  # lone .jsonl, still long enough, but a sidecar is required


@dataclass
class ReadinessRule:
    settle: float
    orphan: float
    require_sidecar: bool

    def needed(self, entry: InboxEntry) -> float | None:
        """How long `entry` must stay unchanged before a verdict; None: it waits for its input forever."""
        if entry.jsonl is None:
            return None
        return self.settle if entry.yaml is not None else self.orphan

    def judge(self, entry: InboxEntry, still_for: float) -> Verdict | None:
        needed = self.needed(entry)
        if needed is None or still_for < needed:
            return None
        if entry.yaml is not None:
            return Verdict.READY
        return Verdict.NO_SIDECAR if self.require_sidecar else Verdict.ORPHAN


@dataclass
class ReadinessTracker(ReadinessRule):
    """Judges whole scans of the inbox (see intake.py for the incremental form the daemon uses)."""

    _seen: dict[str, tuple[InboxEntry, float]] = field(default_factory=dict)

    def observe(self, entries: list[InboxEntry], now: float) -> dict[str, Verdict]:
        """Feed one scan of the inbox; return the names that are decided, with their verdict."""
        verdicts: dict[str, Verdict] = {}
        current = {e.name: e for e in entries}
        for name in list(self._seen):
            if name not in current:
                del self._seen[name]
        for name, entry in current.items():
            previous = self._seen.get(name)
            if previous is None or previous[0] != entry:
                self._seen[name] = (entry, now)
                still_for = 0.0
            else:
                still_for = now - previous[1]
            verdict = self.judge(entry, still_for)
            if verdict is not None:
                verdicts[name] = verdict
        return verdicts

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)
