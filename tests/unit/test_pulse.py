"""The loop's pulse (spoold/daemon/keeper.py): leases and the node lock are renewed only while the loop beats (issue 24)."""

from __future__ import annotations

from spoold.daemon.keeper import LeaseKeeper, Pulse


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pulse_goes_stale_without_beats_and_never_while_held() -> None:
    clock = Clock()
    pulse = Pulse(10.0, clock)
    assert pulse.alive()
    clock.now += 10.5
    assert not pulse.alive() and pulse.silent_for() == 10.5
    pulse.beat()
    assert pulse.alive()
    with pulse.holding():  # a model load: minutes without a beat, still alive
        clock.now += 600
        assert pulse.alive() and pulse.silent_for() == 0.0
    assert pulse.alive()  # leaving the hold is a beat
    clock.now += 11
    assert not pulse.alive()


def test_the_keeper_says_once_that_it_stopped_renewing_and_once_that_it_renews_again(caplog) -> None:
    clock = Clock()
    pulse = Pulse(5.0, clock)
    keeper = LeaseKeeper(pulse=pulse)
    clock.now += 6
    with caplog.at_level("INFO"):
        keeper.check()
        keeper.check()
        pulse.beat()
        keeper.check()
        keeper.check()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("leases are no longer renewed" in m for m in messages) == 1
    assert sum("renewing leases" in m for m in messages) == 1
