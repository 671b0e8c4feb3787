"""The burst into vLLM (engine/vllm/outbox.py): pure, no vLLM needed."""

from __future__ import annotations

from typing import Any

import pytest

from spoold.engine.vllm.outbox import Outbox


def test_flush_hands_over_in_order_and_a_refused_lines_later_requests_stay_out() -> None:
    box = Outbox()
    for request_id, key in (("a#0", 1), ("b", 2), ("a#1", 1), ("a#2", 1), ("c", 3)):
        box.put(request_id, f"prompt {request_id}", "params", key)
    handed: list[str] = []

    def add_request(request_id: str, prompt: Any, params: Any) -> None:
        handed.append(request_id)
        if request_id == "a#1":
            raise ValueError("too long")

    refused = box.flush(add_request, (ValueError,))
    assert handed == ["a#0", "b", "a#1", "c"]  # a#2: its line was already refused
    assert [(rid, str(exc)) for rid, exc in refused] == [("a#1", "too long")]
    assert len(box) == 0 and box.flush(add_request, (ValueError,)) == []


def test_dropped_lines_are_never_handed_over() -> None:
    box = Outbox()
    for key in (1, 2, 3):
        box.put(f"r{key}", "p", "params", key)
    box.drop({2})
    handed: list[str] = []
    box.flush(lambda rid, prompt, params: handed.append(rid), (ValueError,))
    assert handed == ["r1", "r3"]
    box.put("r4", "p", "params", 4)
    box.clear()
    assert len(box) == 0


def test_an_error_that_is_not_a_refusal_propagates() -> None:
    box = Outbox()
    box.put("r1", "p", "params", 1)

    def dead(request_id: str, prompt: Any, params: Any) -> None:
        raise RuntimeError("engine core died")

    with pytest.raises(RuntimeError, match="engine core died"):
        box.flush(dead, (ValueError,))
