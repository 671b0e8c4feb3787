"""The echo backend: answers each request with its own input. For pipeline tests only."""

from __future__ import annotations

import os
import time
from typing import Any

from spoold.engine import responses
from spoold.engine.base import Engine, EngineError, EngineFailure, EngineRequest, EngineResult

CRASH = "SPOOLD_ECHO_CRASH"


def _prompt_text(request: EngineRequest) -> str:
    if request.kind == "chat":
        messages = request.body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content", "") if isinstance(last, dict) else ""
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    prompt = request.body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


class EchoEngine(Engine):
    """Finishes every request on the next `step`, echoing the prompt (cut to max_tokens words).

    `SPOOLD_ECHO_DELAY` (seconds per step) slows it down so tests can kill a
    daemon mid-job, and `SPOOLD_ECHO_PER_STEP` (requests finished per step,
    oldest first) keeps requests of several jobs in flight together; a prompt containing `SPOOLD_ECHO_REJECT` is rejected as a
    per-request error, as vLLM rejects an over-long prompt.

    Crash tests (docs/decisions.md, "When the engine dies"): a prompt containing `SPOOLD_ECHO_CRASH` makes the step
    that would answer it raise EngineFailure, as a poison request kills vLLM's engine core (every request
    in flight is lost); `SPOOLD_ECHO_WEDGE_AFTER=N` makes every step after the N-th block for good, as
    a wedged daemon would (its leases must then lapse).
    """

    def __init__(self, model: str, delay: float | None = None) -> None:
        self.model = model
        self._delay = float(os.environ.get("SPOOLD_ECHO_DELAY", "0")) if delay is None else delay
        self._per_step = int(os.environ.get("SPOOLD_ECHO_PER_STEP", "0"))
        self._pending: list[EngineRequest] = []
        wedge = os.environ.get("SPOOLD_ECHO_WEDGE_AFTER")
        self._wedge_after = int(wedge) if wedge else None
        self._steps = 0
        self._poisoned: set[int] = set()  # keys of SPOOLD_ECHO_CRASH requests

    def add(self, request: EngineRequest) -> EngineResult | None:
        if request.kind not in ("chat", "completion"):
            return EngineResult(
                key=request.key,
                custom_id=request.custom_id,
                error=EngineError("unsupported_kind", f"the echo backend answers chat and completion lines only, not {request.kind}"),
            )
        text = _prompt_text(request)
        if "SPOOLD_ECHO_REJECT" in text:
            return EngineResult(
                key=request.key,
                custom_id=request.custom_id,
                error=EngineError("invalid_request", "prompt rejected by the echo backend"),
            )
        if CRASH in text:
            self._poisoned.add(request.key)
        self._pending.append(request)
        return None

    def step(self) -> list[EngineResult]:
        self._steps += 1
        while self._wedge_after is not None and self._steps > self._wedge_after:
            time.sleep(3600)  # wedged for good (tests only)
        if self._delay:
            time.sleep(self._delay)
        cut = self._per_step or len(self._pending)
        if self._poisoned and any(r.key in self._poisoned for r in self._pending[:cut]):  # its turn: the engine dies
            self._pending.clear()
            self._poisoned.clear()
            raise EngineFailure(f"the echo engine crashed: a {CRASH} line was in flight (a poison request, for tests)")
        done, self._pending = self._pending[:cut], self._pending[cut:]
        return [self._answer(r) for r in done]

    def in_flight(self) -> int:
        return len(self._pending)

    def abort(self, keys: list[int]) -> None:
        drop = set(keys)
        self._pending = [r for r in self._pending if r.key not in drop]

    def abort_all(self) -> None:
        self._pending.clear()
        self._poisoned.clear()

    def _answer(self, request: EngineRequest) -> EngineResult:
        text = _prompt_text(request)
        words = text.split()
        max_tokens = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
        out_words = words[: int(max_tokens)] if isinstance(max_tokens, int) else words
        finish = "length" if len(out_words) < len(words) else "stop"
        choice: dict[str, Any] = {"text": " ".join(out_words), "finish_reason": finish}
        shape = responses.chat_completion if request.kind == "chat" else responses.text_completion
        body = shape(request.adapter[0] if request.adapter else self.model, [choice], len(words), len(out_words))
        return EngineResult(
            key=request.key,
            custom_id=request.custom_id,
            body=body,
            prompt_tokens=len(words),
            completion_tokens=len(out_words),
        )
