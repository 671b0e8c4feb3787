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
    """Each upload's stats and since when they are unchanged; `see` one upload (the intake does,
    on each hint) or `observe` a whole scan."""

    _seen: dict[str, tuple[InboxEntry, float]] = field(default_factory=dict)

    def see(self, entry: InboxEntry, now: float) -> tuple[bool, Verdict | None]:
        """Record one upload as it is now: (changed since last seen, verdict or None)."""
        previous = self._seen.get(entry.name)
        changed = previous is None or previous[0] != entry
        if changed:
            self._seen[entry.name] = (entry, now)
        return changed, self.judge(entry, 0.0 if previous is None or changed else now - previous[1])

    def observe(self, entries: list[InboxEntry], now: float) -> dict[str, Verdict]:
        """Feed one whole scan of the inbox; return the names that are decided, with their verdict."""
        current = {e.name: e for e in entries}
        for name in [n for n in self._seen if n not in current]:
            self.forget(name)
        verdicts = {name: self.see(entry, now)[1] for name, entry in current.items()}
        return {name: v for name, v in verdicts.items() if v is not None}

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def entries(self) -> list[InboxEntry]:
        return [entry for entry, _ in self._seen.values()]
