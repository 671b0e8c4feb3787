"""OpenAI request body -> vLLM SamplingParams keyword arguments.

Pure (no vllm import) so it is unit-tested in milliseconds and reused to
validate profile and sidecar sampling defaults. Precedence, lowest first:
spoold's defaults, the profile's `sampling`, the sidecar's `sampling`, the
line's own body (the last two arrive already merged in the body).

Every problem raises `SamplingError` with one sentence naming the parameter;
the engine turns it into that line's error record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

DEFAULT_MAX_TOKENS = 256
"""vLLM's own default is 16, far too low for a batch job that forgot to say."""
MAX_LOGPROBS = 20
"""vLLM's default `max_logprobs` engine limit (and OpenAI's top_logprobs limit)."""
MAX_STOP_SEQUENCES = 16

Kind = Literal["chat", "completion"]


class SamplingError(ValueError):
    """A request parameter is invalid or unsupported; the message names it."""


# ---- per-key checks -------------------------------------------------------------------------


def _number(key: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingError(f"{key} must be a number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise SamplingError(f"{key} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise SamplingError(f"{key} must be <= {high:g}, got {value!r}")
    return float(value)


def _integer(key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingError(f"{key} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise SamplingError(f"{key} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise SamplingError(f"{key} must be <= {high}, got {value}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SamplingError(f"{key} must be true or false, got {value!r}")
    return value


def _stop(key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise SamplingError(f"{key} must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise SamplingError(f"{key} allows at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
    if any(s == "" for s in items):
        raise SamplingError(f"{key} cannot contain an empty string")
    return items


def _token_ids(key: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise SamplingError(f"{key} must be a list of token ids")
    return [_integer(key, v, low=0) for v in value]


def _logit_bias(key: str, value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise SamplingError(f"{key} must be a map of token id to bias")
    out: dict[int, float] = {}
    for token, bias in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise SamplingError(f"{key} keys must be token ids, got {token!r}") from None
        out[_integer(key, token_id, low=0)] = _number(f"{key}[{token}]", bias, -100, 100)
    return out


def _response_format(key: str, value: Any) -> dict[str, Any] | None:
    """OpenAI `response_format` -> the fields of vLLM's StructuredOutputsParams (or None)."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise SamplingError(f"{key} must be an object with a type (text, json_object or json_schema)")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise SamplingError(f"{key}.json_schema.schema must be a JSON schema object")
        return {"json": schema}
    raise SamplingError(f"{key}.type must be text, json_object or json_schema, got {kind!r}")


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "temperature": lambda k, v: _number(k, v, 0, 2),
    "top_p": lambda k, v: _number(k, v, 0, 1, low_open=True),
    "top_k": lambda k, v: _integer(k, v, low=-1),
    "min_p": lambda k, v: _number(k, v, 0, 1),
    "n": lambda k, v: _integer(k, v, low=1, high=128),
    "seed": lambda k, v: _integer(k, v, low=-(2**63), high=2**64 - 1),
    "presence_penalty": lambda k, v: _number(k, v, -2, 2),
    "frequency_penalty": lambda k, v: _number(k, v, -2, 2),
    "repetition_penalty": lambda k, v: _number(k, v, 0, 2, low_open=True),
    "stop": _stop,
    "stop_token_ids": _token_ids,
    "ignore_eos": _boolean,
    "min_tokens": lambda k, v: _integer(k, v, low=0),
    "include_stop_str_in_output": _boolean,
    "skip_special_tokens": _boolean,
    "logit_bias": _logit_bias,
}
"""Keys copied to SamplingParams under the same name, each with its check."""

_SPECIAL = {"max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format"}
"""Keys that need mapping, not copying."""

SAMPLING_KEYS = frozenset(_CHECKS) | _SPECIAL
"""Every key allowed in a profile's or a sidecar's `sampling` defaults."""

_IGNORED = frozenset(
    {"model", "messages", "prompt", "user", "stream", "stream_options", "metadata", "store", "service_tier",
     "chat_template_kwargs", "add_generation_prompt", "parallel_tool_calls"}
)
"""Known keys that carry no sampling meaning (the prompt, bookkeeping, streaming in a batch)."""

_UNSUPPORTED = frozenset(
    {"tools", "tool_choice", "functions", "function_call", "echo", "suffix", "best_of", "audio",
     "modalities", "prediction", "reasoning_effort", "web_search_options", "logit_bias_type"}
)


def check_defaults(defaults: Mapping[str, Any], source: str = "sampling") -> dict[str, Any]:
    """Validate a `sampling:` mapping (profile or sidecar); raises SamplingError naming the bad key."""
    for key, value in defaults.items():
        name = f"{source}.{key}" if source else key
        if key not in SAMPLING_KEYS:
            raise SamplingError(f"{name}: unknown sampling parameter (known: {', '.join(sorted(SAMPLING_KEYS))})")
        if value is None:
            continue
        if key in _CHECKS:
            _CHECKS[key](name, value)
        elif key in ("max_tokens", "max_completion_tokens"):
            _integer(name, value, low=1)
        elif key == "response_format":
            _response_format(name, value)
        elif key == "top_logprobs":
            _integer(name, value, low=0, high=MAX_LOGPROBS)
        elif key == "logprobs" and not isinstance(value, (bool, int)):
            raise SamplingError(f"{name} must be a boolean (chat) or an integer (completions)")
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
    for key in body:
        if key in _UNSUPPORTED:
            raise SamplingError(f"{key} is not supported by spoold's batch engine")
        if key not in SAMPLING_KEYS and key not in _IGNORED:
            raise SamplingError(f"unknown request parameter {key!r}")
    # null means "unset" (as in OpenAI's API): it never hides a default below it.
    merged = {k: v for k, v in (defaults or {}).items() if v is not None}
    merged.update((k, v) for k, v in body.items() if v is not None)
    kwargs: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        if key in merged:
            kwargs[key] = check(key, merged[key])
    kwargs["max_tokens"] = _max_tokens(merged, kind, prompt_tokens, max_model_len)
    kwargs["logprobs"] = _logprobs(merged, kind)
    response_format = merged.get("response_format")
    kwargs["structured_outputs"] = _response_format("response_format", response_format) if response_format else None
    return kwargs


def _max_tokens(merged: Mapping[str, Any], kind: Kind, prompt_tokens: int, max_model_len: int) -> int:
    room = max_model_len - prompt_tokens
    if room < 1:
        raise SamplingError(
            f"prompt is {prompt_tokens} tokens but the model allows {max_model_len} in total; no room to generate"
        )
    key = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in merged else "max_tokens"
    requested = _integer(key, merged[key], low=1) if key in merged else DEFAULT_MAX_TOKENS
    return min(requested, room)


def _logprobs(merged: Mapping[str, Any], kind: Kind) -> int | None:
    """Chat: `logprobs: true` + `top_logprobs: k`; completions: `logprobs: k`. vLLM wants k (or None)."""
    value = merged.get("logprobs")
    if kind == "chat":
        wanted = _boolean("logprobs", value) if value is not None else False
        top = merged.get("top_logprobs")
        if top is not None and not wanted:
            raise SamplingError("top_logprobs needs logprobs: true")
        return _integer("top_logprobs", top, low=0, high=MAX_LOGPROBS) if top is not None else (0 if wanted else None)
    if "top_logprobs" in merged:
        raise SamplingError("top_logprobs is a chat parameter; completions take logprobs: <int>")
    return None if value is None else _integer("logprobs", value, low=0, high=MAX_LOGPROBS)
