"""The burst into vLLM: requests rendered by `add` wait here, and `step` hands them all over at once.

vLLM's engine core steps as soon as anything arrives, so requests handed over one by one as
they were rendered ran in steps of a few each (4,096 embeddings lines: 228 engine steps of 18
requests on average); handed over together, the core schedules full batches (42 steps of 98;
`LLM.embed` over the whole list: 28 of 146). No vLLM import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outgoing:
    request_id: str
    prompt: Any
    params: Any
    key: int
    """The engine loop's key of the line (a pooling line may be several requests)."""
    lora: Any = None
    """vLLM's LoRARequest of the line's adapter, or None (the base model)."""


class Outbox:
    def __init__(self) -> None:
        self._items: list[Outgoing] = []

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request_id: str, prompt: Any, params: Any, key: int, lora: Any = None) -> None:
        self._items.append(Outgoing(request_id, prompt, params, key, lora))

    def drop(self, keys: set[int]) -> None:
        """Forget the queued requests of these lines (their job was cancelled or lost)."""
        self._items = [o for o in self._items if o.key not in keys]

    def clear(self) -> None:
        self._items.clear()

    def flush(self, add_request: Callable[..., object], refusable: tuple[type[BaseException], ...]) -> list[tuple[str, BaseException]]:
        """Hand every queued request to `add_request`, in order; (request id, error) for each one it
        refused with a `refusable` error. A refused line's later requests are not handed over; any
        other exception propagates (the engine itself is gone)."""
        items, self._items = self._items, []
        refused: list[tuple[str, BaseException]] = []
        gone: set[int] = set()
        for item in items:
            if item.key in gone:
                continue
            try:
                if item.lora is None:
                    add_request(item.request_id, item.prompt, item.params)
                else:
                    add_request(item.request_id, item.prompt, item.params, lora_request=item.lora)
            except refusable as exc:
                gone.add(item.key)
                refused.append((item.request_id, exc))
        return refused
