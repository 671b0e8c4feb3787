"""OpenAI request body -> vLLM SamplingParams keyword arguments.

Pure (no vllm import) so it is unit-tested in milliseconds. The rules for each
key (types, ranges, known and unsupported keys) are `spoold.engine.body_rules`, the
same rules the validating pass applies to each line before inference; this
module only maps. Precedence, lowest first: spoold's defaults, the profile's
`sampling`, the sidecar's `sampling`, the line's own body (the last two arrive
already merged in the body).

Every problem raises `SamplingError` with one sentence naming the parameter;
the engine turns it into that line's error record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from spoold.engine import body_rules
from spoold.engine.body_rules import MAX_LOGPROBS, SAMPLING_KEYS, RuleError

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_LOGPROBS", "SAMPLING_KEYS", "SamplingError", "check_defaults", "sampling_field", "sampling_kwargs"]

DEFAULT_MAX_TOKENS = 256
"""vLLM's own default is 16, far too low for a batch job that forgot to say."""

Kind = Literal["chat", "completion"]

SamplingError = RuleError
"""A request parameter is invalid or unsupported; the message names it."""


def check_defaults(defaults: Mapping[str, Any], source: str = "sampling") -> dict[str, Any]:
    """Validate a `sampling:` mapping (profile or sidecar); raises SamplingError naming the bad key."""
    for key, value in defaults.items():
        name = f"{source}.{key}" if source else key
        if key not in SAMPLING_KEYS:
            raise SamplingError(f"{name}: unknown sampling parameter (known: {', '.join(sorted(SAMPLING_KEYS))})")
        if value is not None:
            body_rules.check_value(key, value, None, name)
    return dict(defaults)


def sampling_field(value: Mapping[str, Any]) -> dict[str, Any]:
    """check_defaults for a pydantic field validator (which wants ValueError)."""
    try:
        return check_defaults(value, source="")
    except SamplingError as exc:
        raise ValueError(str(exc)) from None


def sampling_kwargs(
    body: Mapping[str, Any],
    kind: Kind,
    prompt_tokens: int,
    max_model_len: int,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for vLLM's SamplingParams, with `structured_outputs` as a plain dict or None.

    `defaults` (the profile's sampling) sit below the body. max_tokens is
    clamped to the room left after the prompt, so a generous sidecar default
    never rejects a long prompt (finish_reason says "length" instead).
    """
    body_rules.check_body(body, kind)
    # null means "unset" (as in OpenAI's API): it never hides a default below it.
    merged = {k: v for k, v in (defaults or {}).items() if v is not None}
    merged.update((k, v) for k, v in body.items() if v is not None)
    kwargs: dict[str, Any] = {}
    for key, check in body_rules.COPIED.items():
        if key in merged:
            kwargs[key] = check(key, merged[key])
    kwargs["max_tokens"] = _max_tokens(merged, kind, prompt_tokens, max_model_len)
    kwargs["logprobs"] = _logprobs(merged, kind)
    response_format = merged.get("response_format")
    kwargs["structured_outputs"] = body_rules.response_format("response_format", response_format) if response_format else None
    return kwargs


def _max_tokens(merged: Mapping[str, Any], kind: Kind, prompt_tokens: int, max_model_len: int) -> int:
    room = max_model_len - prompt_tokens
    if room < 1:
        raise SamplingError(f"prompt is {prompt_tokens} tokens but the model allows {max_model_len} in total; no room to generate")
    key = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in merged else "max_tokens"
    requested = body_rules.max_tokens(key, merged[key]) if key in merged else DEFAULT_MAX_TOKENS
    return min(requested, room)


def _logprobs(merged: Mapping[str, Any], kind: Kind) -> int | None:
    """Chat: `logprobs: true` + `top_logprobs: k`; completions: `logprobs: k`. vLLM wants k (or None)."""
    value = merged.get("logprobs")
    if kind == "chat":
        wanted = body_rules.logprobs("logprobs", value, kind) if value is not None else False
        top = merged.get("top_logprobs")
        if top is not None and not wanted:
            raise SamplingError("top_logprobs needs logprobs: true")
        return body_rules.top_logprobs("top_logprobs", top, kind) if top is not None else (0 if wanted else None)
    if "top_logprobs" in merged:
        raise SamplingError("top_logprobs is a chat parameter; completions take logprobs: <int>")
    return None if value is None else int(body_rules.logprobs("logprobs", value, kind))
