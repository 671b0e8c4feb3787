"""The rules for an OpenAI request body: known keys, types, ranges, response_format. Pure; no vLLM.

One set of rules, used twice: offline on each input line (`lines.py`, so the
validating pass and `spoold validate` make a bad value that line's error
record before the job reaches the engine, whatever the backend), and by the
engine's mapping to SamplingParams (`engine/sampling.py`) on the body with the
sidecar's and the profile's defaults merged in. What needs the model (the
prompt's length against the context) or the merged defaults (`top_logprobs`
needs `logprobs: true`, which a sidecar may supply) is left to the mapping.

Every problem raises `RuleError` with one sentence naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

MAX_LOGPROBS = 20
"""vLLM's default `max_logprobs` engine limit (and OpenAI's top_logprobs limit)."""
MAX_STOP_SEQUENCES = 16
MAX_TOKENS_LIMIT = 2**31 - 1
"""No model has a context this long; a larger max_tokens (1e30) is a mistake, not a request."""

GENERATING_KINDS = ("chat", "completion")


class RuleError(ValueError):
    """A request parameter is invalid or unsupported; the message names it."""


# ---- value checks -----------------------------------------------------------------------------


def number(key: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleError(f"{key} must be a number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise RuleError(f"{key} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise RuleError(f"{key} must be <= {high:g}, got {value!r}")
    return float(value)


def integer(key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    given = value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{key} must be an integer, got {given!r}")
    if low is not None and value < low:
        raise RuleError(f"{key} must be >= {low}, got {given!r}")
    if high is not None and value > high:
        raise RuleError(f"{key} must be <= {high}, got {given!r}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RuleError(f"{key} must be true or false, got {value!r}")
    return value


def stop(key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RuleError(f"{key} must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise RuleError(f"{key} allows at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
    if any(s == "" for s in items):
        raise RuleError(f"{key} cannot contain an empty string")
    return items


def token_ids(key: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise RuleError(f"{key} must be a list of token ids")
    return [integer(key, v, low=0) for v in value]


def logit_bias(key: str, value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise RuleError(f"{key} must be a map of token id to bias")
    out: dict[int, float] = {}
    for token, bias in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise RuleError(f"{key} keys must be token ids, got {token!r}") from None
        out[integer(key, token_id, low=0)] = number(f"{key}[{token}]", bias, -100, 100)
    return out


def response_format(key: str, value: Any) -> dict[str, Any] | None:
    """OpenAI `response_format` -> the fields of vLLM's StructuredOutputsParams (or None for text)."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise RuleError(f"{key} must be an object with a type (text, json_object or json_schema)")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RuleError(f"{key}.json_schema.schema must be a JSON schema object")
        return {"json": schema}
    raise RuleError(f"{key}.type must be text, json_object or json_schema, got {kind!r}")


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""The values vLLM's ChatCompletionRequest takes (OpenAI's, plus DeepSeek's `max`)."""
TOOL_CHOICES = ("none", "auto", "required")
NAMED_TOOL_CHOICE = '{"type": "function", "function": {"name": "..."}}'


def template_kwargs(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RuleError(f'{key} must be an object (e.g. {{"enable_thinking": false}})')
    return value


def reasoning_effort(key: str, value: Any) -> str:
    if value not in REASONING_EFFORTS:
        raise RuleError(f"{key} must be one of {', '.join(REASONING_EFFORTS)}, got {_short(value)}")
    return value


def tools(key: str, value: Any) -> list[str]:
    """OpenAI `tools`: a non-empty list of functions, each with a unique name and a JSON schema. Returns the names."""
    if not isinstance(value, list) or not value:
        raise RuleError(f"{key} must be a non-empty list of tools (or left out)")
    names: list[str] = []
    for i, tool in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise RuleError(f'{where} must be an object with type "function"')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise RuleError(f"{where}.function must be an object with a name")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RuleError(f"{where}.function.name must be a non-empty string")
        if name in names:
            raise RuleError(f"{key} names the function {_short(name)} twice")
        names.append(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise RuleError(f"{where}.function.description must be a string")
        if function.get("strict") is not None:
            boolean(f"{where}.function.strict", function["strict"])
        parameters = function.get("parameters")
        if parameters is not None:
            json_schema(f"{where}.function.parameters", parameters)
    return names


def json_schema(key: str, value: Any) -> dict[str, Any]:
    """A JSON schema object, checked against its metaschema (so `{"type": "objekt"}` is refused offline)."""
    if not isinstance(value, dict):
        raise RuleError(f"{key} must be a JSON schema object, got {_short(value)}")
    import jsonschema  # imported here: most lines carry no schema

    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise RuleError(f"{key} is not a valid JSON schema{f' at {where}' if where else ''}: {_cut(exc.message)}") from None
    return value


def tool_choice(key: str, value: Any, tool_names: list[str] | None) -> str | None:
    """ "none" | "auto" | "required" | a named function among `tool_names`; returns the named function or None."""
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise RuleError(f"{key} must be none, auto, required or {NAMED_TOOL_CHOICE}, got {_short(value)}")
        if value != "none" and tool_names is None:
            raise RuleError(f"{key} {value!r} needs tools")
        return None
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name or value.get("type", "function") != "function":
        raise RuleError(f"{key} must be none, auto, required or {NAMED_TOOL_CHOICE}")
    if tool_names is None:
        raise RuleError(f"{key} names the function {_short(name)} but the request has no tools")
    if name not in tool_names:
        raise RuleError(f"{key} names the function {_short(name)}, which is not among the tools ({', '.join(tool_names)})")
    return name


def _short(value: Any) -> str:
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= 100 else text[:97] + "..."


def max_tokens(key: str, value: Any) -> int:
    return integer(key, value, low=1, high=MAX_TOKENS_LIMIT)


def logprobs(key: str, value: Any, kind: str | None) -> bool | int:
    """Chat: `logprobs: true|false`; completions: `logprobs: k`; defaults (kind None): either."""
    if kind == "chat":
        return boolean(key, value)
    if kind == "completion":
        return integer(key, value, low=0, high=MAX_LOGPROBS)
    if isinstance(value, bool):
        return value
    return integer(key, value, low=0, high=MAX_LOGPROBS)


def top_logprobs(key: str, value: Any, kind: str | None) -> int:
    if kind == "completion":
        raise RuleError("top_logprobs is a chat parameter; completions take logprobs: <int>")
    return integer(key, value, low=0, high=MAX_LOGPROBS)


# ---- the key tables ---------------------------------------------------------------------------

COPIED: dict[str, Callable[[str, Any], Any]] = {
    "temperature": lambda k, v: number(k, v, 0, 2),
    "top_p": lambda k, v: number(k, v, 0, 1, low_open=True),
    "top_k": lambda k, v: integer(k, v, low=-1),
    "min_p": lambda k, v: number(k, v, 0, 1),
    "n": lambda k, v: integer(k, v, low=1, high=128),
    "seed": lambda k, v: integer(k, v, low=-(2**63), high=2**64 - 1),
    "presence_penalty": lambda k, v: number(k, v, -2, 2),
    "frequency_penalty": lambda k, v: number(k, v, -2, 2),
    "repetition_penalty": lambda k, v: number(k, v, 0, 2, low_open=True),
    "stop": stop,
    "stop_token_ids": token_ids,
    "ignore_eos": boolean,
    "min_tokens": lambda k, v: integer(k, v, low=0, high=MAX_TOKENS_LIMIT),
    "include_stop_str_in_output": boolean,
    "skip_special_tokens": boolean,
    "logit_bias": logit_bias,
}
"""Keys copied to SamplingParams under the same name, each with its check."""

MAPPED = frozenset(
    {"max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "chat_template_kwargs", "reasoning_effort"}
)
"""Keys the engine maps rather than copies (the last two go to the chat template, see engine/tools.py)."""

SAMPLING_KEYS = frozenset(COPIED) | MAPPED
"""Every key allowed in a profile's or a sidecar's `sampling` defaults."""

IGNORED = frozenset(
    {"model", "messages", "prompt", "user", "stream", "stream_options", "metadata", "store", "service_tier", "add_generation_prompt"}
)
"""Known keys that carry no sampling meaning (the prompt, bookkeeping, streaming in a batch)."""

UNSUPPORTED = frozenset(
    {
        "functions",
        "function_call",
        "echo",
        "suffix",
        "best_of",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
        "logit_bias_type",
    }
)
"""`functions` / `function_call` are OpenAI's deprecated forms of `tools` / `tool_choice` (vLLM refuses them too)."""


def check_value(key: str, value: Any, kind: str | None, name: str | None = None) -> Any:
    """Check one sampling key's value (`kind` None: a default that may serve either kind); returns it mapped."""
    check = _VALUE_CHECKS.get(key)
    if check is None:
        raise RuleError(f"{name or key}: unknown sampling parameter (known: {', '.join(sorted(SAMPLING_KEYS))})")
    return check(name or key, value, kind)


def _ignoring_kind(check: Callable[[str, Any], Any]) -> Callable[[str, Any, str | None], Any]:
    return lambda n, v, k: check(n, v)


_VALUE_CHECKS: dict[str, Callable[[str, Any, str | None], Any]] = {
    **{key: _ignoring_kind(check) for key, check in COPIED.items()},
    "max_tokens": lambda n, v, k: max_tokens(n, v),
    "max_completion_tokens": lambda n, v, k: max_tokens(n, v),
    "logprobs": logprobs,
    "top_logprobs": top_logprobs,
    "response_format": lambda n, v, k: response_format(n, v),
    "chat_template_kwargs": lambda n, v, k: template_kwargs(n, v),
    "reasoning_effort": lambda n, v, k: reasoning_effort(n, v),
}
_TOOL_KEYS: dict[str, Callable[[str, Any, str | None], Any]] = {
    "tools": lambda n, v, k: tools(n, v),
    "tool_choice": lambda n, v, k: None,  # checked against the tools below
    "parallel_tool_calls": lambda n, v, k: boolean(n, v),
}
"""Chat-only body keys (not sampling defaults)."""
_BODY_KEYS: dict[str, Callable[[str, Any, str | None], Any] | None] = {**dict.fromkeys(IGNORED), **_VALUE_CHECKS, **_TOOL_KEYS}
"""Every known body key: its check, or None for keys without sampling meaning (one lookup per key)."""


_SCALARS = frozenset({int, float, str, bool})
_PASSED: set[tuple[str, str, type, Any]] = set()
"""(key, kind, type, value) of scalar values that passed their check (a check depends on nothing else)."""
_PASSED_MAX = 4096


def check_body(body: Mapping[str, Any], kind: str) -> None:
    """Every key of a chat or completion body known and supported, every sampling value of the right type and range.

    `null` means unset (as in OpenAI's API) and is not checked. Raises RuleError.
    """
    passed = _PASSED
    for key, value in body.items():
        try:
            check = _BODY_KEYS[key]
        except KeyError:
            if key in UNSUPPORTED:
                raise RuleError(f"{key} is not supported by spoold's batch engine") from None
            raise RuleError(f"unknown request parameter {key!r}") from None
        if check is None or value is None:
            continue
        if type(value) in _SCALARS:  # the same few sampling values on every line of a job: judged once
            seen = (key, kind, type(value), value)
            if seen in passed:
                continue
            check(key, value, kind)
            if len(passed) >= _PASSED_MAX:
                passed.clear()
            passed.add(seen)
        else:
            check(key, value, kind)
    if body.get("tools") is not None or body.get("tool_choice") is not None:
        check_tools(body, kind)


def check_tools(body: Mapping[str, Any], kind: str) -> str | None:
    """`tools` and `tool_choice` together (as vLLM checks them); returns the named function, if any."""
    if kind != "chat":
        raise RuleError("tools and tool_choice are chat parameters")
    names = tools("tools", body["tools"]) if body.get("tools") is not None else None
    choice = body.get("tool_choice")
    return tool_choice("tool_choice", choice, names) if choice is not None else None


def body_problem(kind: str, body: Mapping[str, Any]) -> str | None:
    """check_body for the line parser: the problem in one sentence, or None. Kinds without rules here pass."""
    if kind not in GENERATING_KINDS:
        return None
    try:
        check_body(body, kind)
    except RuleError as exc:
        return str(exc)
    return None
