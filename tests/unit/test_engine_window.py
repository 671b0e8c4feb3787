"""`engine.window`: a number, or `auto` (the loaded engine's own choice: twice vLLM's batch)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spoold.config import Config
from spoold.engine.base import AUTO_WINDOW, EngineRequest, EngineResult
from spoold.engine.echo import EchoEngine
from spoold.engine.loop import EngineLoop, resolve_window


class Feeder:
    def __init__(self, n: int) -> None:
        self.left, self.exhausted, self.got = list(range(1, n + 1)), False, []

    def next_request(self) -> EngineRequest | None:
        if not self.left:
            self.exhausted = True
            return None
        line = self.left.pop(0)
        return EngineRequest(line, f"c{line}", "completion", {"prompt": f"p {line}"})

    def take(self, line: int, result: EngineResult) -> None:
        self.got.append(line)

    def dropped(self, count: int) -> None:
        pass

    def backlogged(self) -> bool:
        return False


class BatchedEcho(EchoEngine):
    """An engine that asks for a window of 3 under `auto`."""

    def auto_window(self) -> int:
        return 3


def test_the_default_window_is_auto_and_a_number_or_auto_is_accepted() -> None:
    assert Config().engine.window == "auto"
    assert Config(engine={"window": 64}).engine.window == 64
    for bad in (0, -5, "big"):
        with pytest.raises(ValidationError):
            Config(engine={"window": bad})


def test_resolve_window_asks_the_engine_only_under_auto() -> None:
    engine = BatchedEcho("m", delay=0)
    assert resolve_window(7, engine) == 7 and resolve_window(7, None) == 7
    assert resolve_window("auto", engine) == 3
    assert resolve_window("auto", None) == AUTO_WINDOW  # no model loaded yet
    assert EchoEngine("m", delay=0).auto_window() == AUTO_WINDOW


def test_fill_under_auto_keeps_the_engines_window() -> None:
    loop, feeder = EngineLoop(BatchedEcho("m", delay=0)), Feeder(10)
    loop.fill([feeder], "auto")
    assert loop.in_flight() == 3 and feeder.left == list(range(4, 11))
    loop.step()
    assert sorted(feeder.got) == [1, 2, 3] and loop.in_flight() == 0
    loop.fill([feeder], 5)  # a number is the window, whatever the engine would pick
    assert loop.in_flight() == 5
