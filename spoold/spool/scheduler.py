"""Which ready job runs next (pure).

Order: highest priority first; within it, jobs for the model already loaded
(a model switch costs a load), unless another model's oldest job has waited
longer than `switch_after`; then oldest first, then name.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    priority: int
    queued_at: float
    model: str | None
    """None when the sidecar is unreadable: such jobs fail fast without an engine."""
    size: int | None = None
    """The input's size when last seen, if known (an inbox job's)."""


def _fifo(candidate: Candidate) -> tuple[float, str]:
    return (candidate.queued_at, candidate.name)


def pick(candidates: list[Candidate], loaded_model: str | None, now: float, switch_after: float) -> Candidate | None:
    if not candidates:
        return None
    broken = [c for c in candidates if c.model is None]
    if broken:
        return min(broken, key=_fifo)
    top = max(c.priority for c in candidates)
    tier = [c for c in candidates if c.priority == top]
    same = [c for c in tier if c.model == loaded_model]
    others = [c for c in tier if c.model != loaded_model]
    if not same:
        return min(tier, key=_fifo)
    if others:
        oldest_other = min(others, key=_fifo)
        if now - oldest_other.queued_at > switch_after:
            return oldest_other
    return min(same, key=_fifo)


class ReadyQueue:
    """Ready jobs kept between looks: per model, a heap on (-priority, age, name).

    Picking costs O(models x log n), not a sort of everything waiting; removal
    is lazy (an entry counts only while it is the name's current candidate).
    """

    def __init__(self) -> None:
        self._heaps: dict[str | None, list[tuple[int, float, str, int, Candidate]]] = {}
        self._live: dict[str, Candidate] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, name: str) -> bool:
        return name in self._live

    def get(self, name: str) -> Candidate | None:
        return self._live.get(name)

    def push(self, candidate: Candidate) -> None:
        self._live[candidate.name] = candidate
        self._seq += 1
        entry = (-candidate.priority, candidate.queued_at, candidate.name, self._seq, candidate)
        heapq.heappush(self._heaps.setdefault(candidate.model, []), entry)

    def discard(self, name: str) -> None:
        self._live.pop(name, None)

    def _top(self, model: str | None) -> Candidate | None:
        heap = self._heaps.get(model)
        while heap and self._live.get(heap[0][2]) is not heap[0][4]:
            heapq.heappop(heap)
        if heap is not None and not heap:
            del self._heaps[model]
        return heap[0][4] if heap else None

    def pick(self, loaded_model: str | None, now: float, switch_after: float) -> Candidate | None:
        """The job `pick` would choose among everything queued."""
        tops = [c for c in (self._top(m) for m in list(self._heaps)) if c is not None]
        return pick(tops, loaded_model, now, switch_after)
