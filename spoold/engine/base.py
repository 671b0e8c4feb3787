"""The seam between the engine loop and an inference backend.

The engine loop (`engine/loop.py`) feeds requests from every active job one at
a time (`add`) and harvests finished ones (`step`), keeping a rolling window in
flight, so neither a chunk boundary (a checkpoint) nor a job boundary drains
the engine. Inside the engine a request is known by its `key`, unique across
all jobs the engine serves; the loop maps a key back to its job and line, and
`abort(keys)` drops one job's requests without touching the others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

RequestKind = Literal["chat", "completion", "embeddings", "score", "rerank"]
"""The url kinds of SPEC section 4: generating (chat, completion) and pooling (the rest)."""

# The line `url` that asks for each kind of request (SPEC section 4).
URL_KINDS: dict[str, RequestKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embeddings",
    "/v1/score": "score",
    "/v1/rerank": "rerank",
}
KIND_URLS: dict[RequestKind, str] = {kind: url for url, kind in URL_KINDS.items()}


@dataclass(slots=True)
class EngineRequest:
    """One request for the engine. Not frozen: its job fills in the sampling defaults and adapter, and the
    engine loop its key, on the object the line was parsed into (one object per line, nobody else holds it)."""

    line: int
    """1-based input line number within its job (for messages)."""
    custom_id: str
    kind: RequestKind
    body: dict[str, Any]
    """The OpenAI request body, sidecar sampling defaults already merged (the line wins)."""
    key: int = 0
    """The request's identity inside the engine, unique across jobs (set by the engine loop)."""
    adapter: tuple[str, str] | None = None
    """(name, PEFT folder) of the LoRA adapter this request runs with (its job's model is an adapter); None: the base."""


@dataclass(frozen=True)
class EngineError:
    code: str
    message: str


@dataclass(frozen=True)
class EngineResult:
    """One finished request: a response body, or an error for that line alone."""

    key: int
    """The `key` of the request this answers."""
    custom_id: str
    body: dict[str, Any] | None = None
    """On success: an OpenAI `chat.completion` / `text_completion` / embeddings `list` object,
    or vLLM's score / rerank response."""
    error: EngineError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class EngineFailure(Exception):
    """The engine as a whole failed (not one request): the job's attempt counts."""


class ModelLoadError(EngineFailure):
    """The model could not be loaded; its jobs fail with this message."""


AUTO_WINDOW = 256
"""`engine.window: auto` for an engine that names no batch size of its own (echo)."""


class Engine(ABC):
    """A loaded model that accepts requests and returns them as they finish."""

    model: str
    """The profile name (or local path) this engine serves."""

    def auto_window(self) -> int:
        """Requests to keep in flight under `engine.window: auto`: enough that the engine's
        scheduler never waits for the loop to add the next ones."""
        return AUTO_WINDOW

    @abstractmethod
    def add(self, request: EngineRequest) -> EngineResult | None:
        """Queue a request; return an error result at once if it is rejected (too long, bad params)."""

    @abstractmethod
    def step(self) -> list[EngineResult]:
        """Make bounded progress (one scheduler step) and return the requests that finished.

        Must return within seconds so the caller can ping the watchdog, renew
        its lease and notice a stop request.
        """

    @abstractmethod
    def in_flight(self) -> int:
        """How many added requests have not been returned yet."""

    @abstractmethod
    def abort(self, keys: list[int]) -> None:
        """Drop these unfinished requests (one job cancelled or lost); unknown keys are ignored."""

    @abstractmethod
    def abort_all(self) -> None:
        """Drop every unfinished request (on stop or cancel); they are re-run on resume."""

    def close(self) -> None:  # noqa: B027 (optional hook: an engine without resources keeps the default)
        """Release the model (and its GPU memory)."""
