"""OpenAI response bodies, shaped like vLLM's own OpenAI server output."""

from __future__ import annotations

import time
import uuid
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    model: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    created: int | None = None,
) -> dict[str, Any]:
    """`choices` items: {"text", "finish_reason", "logprobs"(optional)}."""
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(created if created is not None else time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": c.get("logprobs"),
                "finish_reason": c.get("finish_reason", "stop"),
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    model: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(created if created is not None else time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "text": c["text"],
                "logprobs": c.get("logprobs"),
                "finish_reason": c.get("finish_reason", "stop"),
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }
