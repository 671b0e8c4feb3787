"""Which ready job runs next (pure).

Order: highest priority first; within it, jobs for the model already loaded
(a model switch costs a load), unless another model's oldest job has waited
longer than `switch_after`; then oldest first, then name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    priority: int
    queued_at: float
    model: str | None
    """None when the sidecar is unreadable: such jobs fail fast without an engine."""


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
