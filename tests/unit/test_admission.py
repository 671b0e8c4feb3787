"""Admission's counting rules (spoold/daemon/admission.py), pure: no daemon, no processes."""

from __future__ import annotations

from spoold.daemon.admission import others_turn, slots_to_start, wants_more


def test_free_slots_fill_up_to_the_limit() -> None:
    assert slots_to_start(limit=8, active=0, held=0, outranks_waiting=False) == 8
    assert slots_to_start(limit=8, active=3, held=5, outranks_waiting=False) == 3
    assert slots_to_start(limit=8, active=3, held=8, outranks_waiting=False) == 0


def test_with_every_slot_fed_as_many_again_start_ahead() -> None:
    assert slots_to_start(limit=8, active=8, held=8, outranks_waiting=False) == 8
    assert slots_to_start(limit=8, active=8, held=13, outranks_waiting=False) == 3
    assert slots_to_start(limit=8, active=8, held=16, outranks_waiting=False) == 0


def test_an_urgent_job_gets_a_start_even_when_the_slots_are_taken() -> None:
    assert slots_to_start(limit=8, active=5, held=8, outranks_waiting=True) == 1
    assert slots_to_start(limit=8, active=8, held=16, outranks_waiting=True) == 1
    assert slots_to_start(limit=8, active=2, held=4, outranks_waiting=True) == 4  # free slots anyway


def test_never_more_than_two_windows_of_lines_held() -> None:
    assert wants_more(supply=0, window=512)
    assert wants_more(supply=1023, window=512)
    assert not wants_more(supply=1024, window=512)


def test_another_models_turn_waits_for_the_loaded_one_to_drain() -> None:
    assert others_turn("b", "a", busy=True)
    assert not others_turn("b", "a", busy=False)  # idle: switch now
    assert not others_turn("a", "a", busy=True)
    assert not others_turn(None, "a", busy=True)  # model unknown yet (it fails at its start)
    assert not others_turn("b", None, busy=True)
