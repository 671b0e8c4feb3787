"""Admission: which jobs get the free slots, and when to claim more.

The counting rules are pure functions (tested without processes); `Admission` applies them to the daemon's jobs:
never hoard (fewer than two windows of lines held), start ahead of a free slot once every slot is fed, an urgent
job overtakes those started ahead, and another model's turn comes only once the loaded one drained."""

from __future__ import annotations

import logging
import time

from spoold.daemon.base import Choice
from spoold.daemon.starts import Starts
from spoold.engine.loop import resolve_window
from spoold.job.shards.plan import ShardDir
from spoold.spool.jobdir import JobDir
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.readiness import Verdict

log = logging.getLogger("spoold.daemon")


def slots_to_start(limit: int, active: int, held: int, outranks_waiting: bool) -> int:
    """How many more jobs to start now (pure). `held`: active + waiting + starting.

    Up to `limit` jobs share the engine; once every slot is fed, up to as many again are started ahead,
    so a slot is refilled the moment its job drains. A job more urgent than one started ahead gets a
    start even then: it is fed before them, so it must not wait for their slots."""
    slots = limit - held
    if active >= limit:
        slots = 2 * limit - held
    if slots <= 0 and outranks_waiting:
        slots = 1
    return slots


def wants_more(supply: int, window: int) -> bool:
    """Claim another job only while the lines already held cannot keep the window full much longer (pure):
    fewer than two windows. A daemon busy with a long job leaves the rest of the inbox to other daemons."""
    return supply < 2 * window


def others_turn(model: str | None, current: str | None, busy: bool) -> bool:
    """The next job needs another model than the one in use: let the loaded one drain first (pure)."""
    return model is not None and current is not None and model != current and busy


class Admission(Starts):
    def _current_model(self) -> str | None:
        for job in self.active + self.waiting:
            return job.engine_model  # an adapter job's base: its adapters are the same model here
        for _, model, _ in self.starting.values():
            if model is not None:
                return model
        return self.engines.loaded_model

    def _wants_more(self) -> bool:
        """Claim another job only when the jobs already taken cannot keep the window full much longer.

        Jobs are never hoarded: a daemon busy with a long job leaves the rest of the
        inbox to other daemons until its reader nears the end.
        """
        window = resolve_window(self.config.engine.window, self.loop.engine if self.loop else None)
        starting = sum(self._supply.get(name, window) for name in self.starting)  # a shard's size is known; a job's is not yet
        supply = sum(j.remaining() for j in self.active + self.waiting) + starting
        return wants_more(supply, window)

    def _admit(self, now: float) -> None:
        if self.intake.overdue(now) and (self.active or self.waiting or self.starting):
            return  # decide every upload whose time has come first, so jobs are taken in priority order across all
        if len(self.closing) >= self.config.engine.max_active_jobs:
            return  # ending jobs is the bottleneck (tiny jobs): more starts would only queue behind their ends
        limit = self.config.engine.max_active_jobs
        held = len(self.active) + len(self.waiting) + len(self.starting)
        slots = slots_to_start(limit, len(self.active), held, False)
        if slots <= 0 and self._outranks_waiting(now):
            slots = slots_to_start(limit, len(self.active), held, True)
        while slots > 0 and self._wants_more():
            choice = self._next_choice(now)
            if choice is None:
                return
            busy = bool(self.active or self.waiting or self.starting)
            if others_turn(choice.candidate.model, self._current_model(), busy):
                return  # another model's turn: let the loaded one drain once, then switch
            self._take(choice)
            slots -= 1
        self._validate_next_ahead(now)

    def _outranks_waiting(self, now: float) -> bool:
        """The next job to take has a higher priority than a job already started but not fed yet."""
        if not self.waiting:
            return False
        lowest = min(j.priority for j in self.waiting)
        nxt = self.intake.ready.pick(self._current_model(), now, self.config.engine.model_switch_after)
        return (nxt is not None and nxt.priority > lowest) or any(c.candidate.priority > lowest for c in self._resumable)

    def _next_choice(self, now: float) -> Choice | None:
        """The inbox's next job or a processing/ job (or shard) to resume or take over, whichever has
        the higher priority; on a tie the one already in processing/ (it was claimed earlier)."""
        self._resumable = [c for c in self._resumable if c.candidate.name not in self.starting]
        inbox = self._next_inbox(now)
        if self._resumable:
            best = min(range(len(self._resumable)), key=lambda i: (-self._resumable[i].candidate.priority, i))
            if inbox is None or self._resumable[best].candidate.priority >= inbox.candidate.priority:
                return self._resumable.pop(best)
        return inbox

    def _next_inbox(self, now: float) -> Choice | None:
        switch_after = self.config.engine.model_switch_after
        while True:
            chosen = self.intake.ready.pick(self._current_model(), now, switch_after)
            if chosen is None:
                return None
            if self._not_before.get(chosen.name, 0) > now or chosen.name in self.starting or self._too_big(chosen.name, chosen.model):
                self.intake.ready.discard(chosen.name)  # seen again at the next rescan
                continue
            return Choice(chosen, self.intake.verdicts.get(chosen.name, Verdict.READY))

    def _take(self, choice: Choice) -> None:
        name = choice.candidate.name
        if choice.verdict is not None:
            self.intake.taken(name)
        ticket = self.turnstile.ticket() if choice.verdict is not None else None
        future = self.starter.submit(self._start, choice, ticket)
        future.add_done_callback(lambda _: self.wake.set())
        self.starting[name] = (future, choice.candidate.model, time.monotonic())
        if isinstance(choice.job, ShardDir):
            self._supply[name] = choice.job.span.lines

    def _validate_next_ahead(self, now: float) -> None:
        """While jobs run, validate the inbox job likely to run next (large inputs, in another process)."""
        nxt = self.intake.ready.pick(self._current_model(), now, self.config.engine.model_switch_after)
        if nxt is not None:
            self._offer_ahead(nxt.name, nxt.model, nxt.size)

    def _offer_ahead(self, name: str, model: str | None, size: int | None) -> None:
        """Hand an inbox input to the ahead-of-time pass; only a large one is worth a process (and a stat)."""
        if model is None or (size is not None and size < self.prevalidator.min_bytes):
            return
        profile = self.profiles.get(model)
        served = self._sidecar_model(name, self.spool.inbox / f"{name}{SIDECAR_SUFFIX}")[1] or model  # an adapter's own name
        claimed_as = JobDir(self.spool.processing / name).input  # where the worker looks once the claim moved it
        self.prevalidator.offer(self.spool.inbox / f"{name}{INPUT_SUFFIX}", served, profile.serves if profile else None, claimed_as)
