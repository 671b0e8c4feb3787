"""OpenAI response bodies, shaped like vLLM's own OpenAI server output.

Pure functions over plain data, shared by every backend. A choice is a dict
`{"text", "finish_reason", "stop_reason"?, "logprobs"?, "message"?}` (`message`: a chat
message with tool calls or reasoning, built by engine/tools.py; else text is the content); `logprobs` is
already in the OpenAI shape of its endpoint (see `chat_logprobs` and
`completion_logprobs`, which take backend-neutral `TokenLogprob`s).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

LOGPROB_FLOOR = -9999.0
"""-inf is not valid JSON; vLLM's server clamps to this value too."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its logprob, and the most likely alternatives (best first)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


_RANDOM = random.Random()  # seeded from os.urandom, once per process (and again in a forked child)
os.register_at_fork(after_in_child=_RANDOM.seed)


def random_hex() -> str:
    """128 random bits as 32 hex digits (what uuid4().hex carries), for ids that must not repeat.

    No system call per id: os.urandom releases the GIL, and with the job I/O thread busy
    beside the engine loop, each release could cost a switch interval (5 ms) to take it back."""
    return f"{_RANDOM.getrandbits(128):032x}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{random_hex()}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion(
    kind: str,
    model: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    created: int | None,
) -> dict[str, Any]:
    chat = kind == "chat.completion"
    shaped = []
    for i, c in enumerate(choices):
        message = c.get("message") or {"role": "assistant", "content": c["text"]}
        content: dict[str, Any] = {"message": message} if chat else {"text": c["text"]}
        shaped.append({"index": i, **content, "logprobs": c.get("logprobs"),
                       "finish_reason": c.get("finish_reason", "stop"), "stop_reason": c.get("stop_reason")})  # fmt: skip
    return {
        "id": new_id("chatcmpl" if chat else "cmpl"),
        "object": kind,
        "created": int(created if created is not None else time.time()),
        "model": model,
        "choices": shaped,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_completion(
    model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int, created: int | None = None
) -> dict[str, Any]:
    """`choices` items: {"text", "finish_reason", "stop_reason", "logprobs"} (all but text optional)."""
    return _completion("chat.completion", model, choices, prompt_tokens, completion_tokens, created)


def text_completion(
    model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int, created: int | None = None
) -> dict[str, Any]:
    return _completion("text_completion", model, choices, prompt_tokens, completion_tokens, created)


def _finite(logprob: float) -> float:
    return LOGPROB_FLOOR if math.isnan(logprob) else max(logprob, LOGPROB_FLOOR)


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat.completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    return {
        "content": [
            {
                "token": t.token,
                "logprob": _finite(t.logprob),
                "bytes": _token_bytes(t.token),
                "top_logprobs": [{"token": tok, "logprob": _finite(lp), "bytes": _token_bytes(tok)} for tok, lp in t.top],
            }
            for t in tokens
        ]
    }


def completion_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a text_completion: the legacy parallel lists with text offsets."""
    offsets: list[int] = []
    offset = 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "tokens": [t.token for t in tokens],
        "top_logprobs": [{tok: _finite(lp) for tok, lp in t.top} for t in tokens],
    }
