"""Offline checks of `/v1/embeddings`, `/v1/score` and `/v1/rerank` bodies. Pure: no I/O, no vllm.

The shapes are those vLLM's OpenAI server (and its `run_batch`) accepts; the
engine validates again with vLLM's own request classes, so these checks only
catch what is wrong in any case, early (in `spoold validate` and the
validating pass), with a one-line message. Each function returns a problem
message, or None when the body looks runnable.
"""

from __future__ import annotations

from typing import Any

ENCODING_FORMATS = ("float", "base64")
"""`bytes` / `bytes_only` answer with raw bytes, which a JSONL result line cannot hold."""
EMBED_DTYPES = ("float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2")
ENDIANNESS = ("native", "big", "little")
SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) and t >= 0 for t in value)


def _messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)


def embeddings_problem(body: dict[str, Any]) -> str | None:
    if "input" not in body and "messages" not in body:
        return "input is required (a string, a list of strings, token ids or a list of token-id lists)"
    if "input" in body and "messages" in body:
        return "give input or messages, not both"
    if "messages" in body:  # vLLM's chat-style embeddings request: one conversation, or a list of them
        value = body["messages"]
        if not (_messages(value) or (isinstance(value, list) and bool(value) and all(_messages(v) for v in value))):
            return "messages must be a non-empty list of messages (objects with a role), or a list of such lists"
        return _common_problem(body)
    value = body["input"]
    ok = (
        isinstance(value, str)
        or _token_ids(value)
        or (isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))
        or (isinstance(value, list) and bool(value) and all(_token_ids(v) for v in value))
        or _messages(value)  # vLLM also takes one conversation as input
    )
    if not ok:
        return "input must be a string, a non-empty list of strings, token ids or a list of token-id lists"
    fmt = body.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:
        return f"encoding_format must be float or base64, got {fmt!r}"
    dimensions = body.get("dimensions")
    if dimensions is not None and not (_is_int(dimensions) and dimensions >= 1):
        return f"dimensions must be a positive integer, got {dimensions!r}"
    if body.get("embed_dtype", "float32") not in EMBED_DTYPES:
        return f"embed_dtype must be one of {', '.join(EMBED_DTYPES)}"
    if body.get("endianness", "native") not in ENDIANNESS:
        return f"endianness must be one of {', '.join(ENDIANNESS)}"
    return _common_problem(body)


def score_problem(body: dict[str, Any]) -> str | None:
    pairs = [pair for pair in SCORE_PAIRS if pair[0] in body and pair[1] in body]
    if len(pairs) != 1:
        names = "; ".join(f"{a} and {b}" for a, b in SCORE_PAIRS)
        return f"a score body needs exactly one pair of inputs ({names})"
    first, second = pairs[0]
    for key in pairs[0]:
        problem = _score_input_problem(key, body[key], allow_list=True)
        if problem:
            return problem
    n1, n2 = _count(body[first]), _count(body[second])
    if n2 == 0:
        return f"{second} must not be empty"
    if n1 not in (1, n2):
        return f"{first} has {n1} items and {second} {n2}: the counts must be 1:1, 1:N or N:N"
    return _scoring_common_problem(body)


def rerank_problem(body: dict[str, Any]) -> str | None:
    if "query" not in body or "documents" not in body:
        return "a rerank body needs query and documents"
    problem = _score_input_problem("query", body["query"], allow_list=False) or _score_input_problem(
        "documents", body["documents"], allow_list=True
    )
    if problem:
        return problem
    if _count(body["documents"]) == 0:
        return "documents must not be empty"
    top_n = body.get("top_n", 0)
    if not (_is_int(top_n) and top_n >= 0):
        return f"top_n must be a non-negative integer, got {top_n!r}"
    return _scoring_common_problem(body)


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _score_input_problem(key: str, value: Any, *, allow_list: bool) -> str | None:
    """A score input is a string or {"content": [parts]}; a list of them where allowed."""
    items = value if allow_list and isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, dict) and isinstance(item.get("content"), list):
            continue
        what = "a string or a list of strings" if allow_list else "a string"
        return f'{key} must be {what} (or {{"content": [...]}} parts)'
    return None


def _scoring_common_problem(body: dict[str, Any]) -> str | None:
    for key in ("max_tokens_per_query", "max_tokens_per_doc"):
        value = body.get(key, 0)
        if not (_is_int(value) and value >= 0):
            return f"{key} must be a non-negative integer, got {value!r}"
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        return "chat_template_kwargs must be an object"
    return _common_problem(body)


def _common_problem(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return "user must be a string"
    truncate = body.get("truncate_prompt_tokens")
    if truncate is not None and not (_is_int(truncate) and truncate >= -1):
        return f"truncate_prompt_tokens must be an integer >= -1, got {truncate!r}"
    return None


PROBLEMS = {"embeddings": embeddings_problem, "score": score_problem, "rerank": rerank_problem}
