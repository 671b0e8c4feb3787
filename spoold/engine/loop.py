"""One engine fed by many jobs: keep its window full, route each result back to its job.

Requests are known to the engine by a key unique across jobs; this loop maps
a key to its job and line, so nothing leaks from one job into another, and
`drop(job)` aborts one job's requests without touching the rest. Jobs are
filled in the order given (highest priority, then the earliest admitted), so
the last requests of one job and the first of the next run side by side.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Protocol

from spoold.engine.base import AUTO_WINDOW, Engine, EngineRequest, EngineResult
from spoold.engine.faults import add_or_reject

FILL_BUDGET = 1000
"""Lines read per fill before the loop steps (bounded, so long runs of bad lines still reach the beat)."""


class Feeder(Protocol):
    exhausted: bool

    def backlogged(self) -> bool: ...
    def next_request(self) -> EngineRequest | None: ...
    def take(self, line: int, result: EngineResult) -> None: ...
    def dropped(self, count: int) -> None: ...


def resolve_window(configured: int | str, engine: Engine | None) -> int:
    """`engine.window` as a number: `auto` asks the loaded engine (AUTO_WINDOW before one is loaded)."""
    if isinstance(configured, int):
        return configured
    return engine.auto_window() if engine is not None else AUTO_WINDOW


class EngineLoop:
    def __init__(self, engine: Engine, clock=time.monotonic) -> None:
        self.engine = engine
        self._owners: dict[int, tuple[Feeder, int]] = {}
        self._keys = itertools.count(1)
        self._clock = clock
        self.idle_seconds = 0.0
        self._idle_since: float | None = None

    def in_flight(self) -> int:
        return len(self._owners)

    def fill(self, feeders: Sequence[Feeder], window: int | str, budget: int = FILL_BUDGET) -> None:
        """Add requests from `feeders`, in order, until the window (`engine.window`) is full or the budget is spent."""
        window = resolve_window(window, self.engine)
        for feeder in feeders:
            if feeder.backlogged():
                continue  # its commits lag behind: no more of its records in memory for now
            while not feeder.exhausted and len(self._owners) < window and budget > 0:
                budget -= 1
                request = feeder.next_request()
                if request is None:
                    continue
                key = request.key = next(self._keys)
                self._owners[key] = (feeder, request.line)
                rejected = add_or_reject(self.engine, request)
                if rejected is not None:
                    self._route(rejected)
            if budget <= 0 or len(self._owners) >= window:
                return

    def step(self) -> int:
        """One engine step; results go to their jobs. Returns how many finished."""
        if not self._owners:
            return 0
        results = self.engine.step()
        for result in results:
            self._route(result)
        return len(results)

    def _route(self, result: EngineResult) -> None:
        owner = self._owners.pop(result.key, None)
        if owner is not None:  # an aborted job's late result is dropped
            feeder, line = owner
            feeder.take(line, result)

    def drop(self, feeder: Feeder) -> None:
        """Abort one job's requests in the engine; its lines stay open (re-run on resume)."""
        keys = [k for k, (f, _) in self._owners.items() if f is feeder]
        if keys:
            self.engine.abort(keys)
            for key in keys:
                del self._owners[key]
            feeder.dropped(len(keys))

    def drop_all(self) -> None:
        self.engine.abort_all()
        counts: dict[int, tuple[Feeder, int]] = {}
        for feeder, _ in self._owners.values():
            n = counts.get(id(feeder), (feeder, 0))[1]
            counts[id(feeder)] = (feeder, n + 1)
        self._owners.clear()
        for feeder, n in counts.values():
            feeder.dropped(n)

    def account_idle(self, work_waiting: bool) -> None:
        """Count seconds with a model loaded and work waiting but nothing in flight."""
        now = self._clock()
        idle = work_waiting and not self._owners
        if self._idle_since is not None:
            self.idle_seconds += now - self._idle_since
        self._idle_since = now if idle else None
