"""OpenAI body -> SamplingParams kwargs: pure and fast (no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from spoold.engine.sampling import DEFAULT_MAX_TOKENS, SamplingError, check_defaults, sampling_kwargs


def kw(
    body: dict[str, Any], kind: str = "chat", prompt: int = 10, max_len: int = 512, defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    return sampling_kwargs(body, kind, prompt, max_len, defaults)  # type: ignore[arg-type]


def test_plain_chat_gets_spoolds_default_max_tokens_not_vllms_16() -> None:
    out = kw({"messages": [], "model": "m"})
    assert out == {"max_tokens": DEFAULT_MAX_TOKENS, "logprobs": None, "structured_outputs": None}


def test_every_mapped_parameter() -> None:
    body = {
        "messages": [], "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "n": 3, "stop": "END", "seed": 42, "presence_penalty": 0.1, "frequency_penalty": -0.2,
        "repetition_penalty": 1.1, "ignore_eos": True, "min_tokens": 2, "stop_token_ids": [5],
        "logit_bias": {"17": 2.5},
    }  # fmt: skip
    out = kw(body)
    assert out["max_tokens"] == 7
    assert out["temperature"] == 0.5 and out["top_p"] == 0.9 and out["top_k"] == 40 and out["min_p"] == 0.05
    assert out["n"] == 3 and out["seed"] == 42 and out["stop"] == ["END"]
    assert out["presence_penalty"] == 0.1 and out["frequency_penalty"] == -0.2 and out["repetition_penalty"] == 1.1
    assert out["ignore_eos"] is True and out["min_tokens"] == 2 and out["stop_token_ids"] == [5]
    assert out["logit_bias"] == {17: 2.5}


def test_max_completion_tokens_wins_for_chat() -> None:
    assert kw({"max_tokens": 5, "max_completion_tokens": 9})["max_tokens"] == 9
    assert kw({"max_tokens": 5}, kind="completion")["max_tokens"] == 5


def test_max_tokens_clamped_to_room_after_prompt() -> None:
    assert kw({"max_tokens": 1000}, prompt=500, max_len=512)["max_tokens"] == 12
    assert kw({}, prompt=400, max_len=512)["max_tokens"] == 112


def test_prompt_filling_the_context_is_an_error() -> None:
    with pytest.raises(SamplingError, match="no room"):
        kw({}, prompt=512, max_len=512)


def test_profile_defaults_sit_below_the_body() -> None:
    defaults = {"max_tokens": 16, "temperature": 0.6, "top_k": 20}
    out = kw({"temperature": 0.0}, defaults=defaults)
    assert out["max_tokens"] == 16 and out["temperature"] == 0.0 and out["top_k"] == 20


def test_null_values_mean_unset() -> None:
    out = kw({"temperature": None, "max_tokens": None}, defaults={"temperature": 0.3})
    assert out["temperature"] == 0.3 and out["max_tokens"] == DEFAULT_MAX_TOKENS


def test_stop_list() -> None:
    assert kw({"stop": ["a", "bc"]})["stop"] == ["a", "bc"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 1.5}, "top_k must be an integer"),
        ({"n": 0}, "n must be >= 1"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens must be an integer"),
        ({"stop": ""}, "empty string"),
        ({"stop": [1, 2]}, "stop must be a string or a list"),
        ({"seed": "x"}, "seed"),
        ({"ignore_eos": "yes"}, "ignore_eos must be true or false"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"a": 1}}, "logit_bias keys"),
        ({"temprature": 0.5}, "unknown request parameter 'temprature'"),
        ({"tools": []}, "tools must be a non-empty list"),
        ({"functions": []}, "functions is not supported"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
    ],
)
def test_invalid_values_name_the_parameter(body: dict[str, Any], message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        kw(body)


def test_chat_logprobs() -> None:
    assert kw({"logprobs": True})["logprobs"] == 0
    assert kw({"logprobs": True, "top_logprobs": 3})["logprobs"] == 3
    assert kw({"logprobs": False})["logprobs"] is None
    with pytest.raises(SamplingError, match="needs logprobs: true"):
        kw({"top_logprobs": 3})
    with pytest.raises(SamplingError, match="logprobs must be true or false"):
        kw({"logprobs": 2})
    with pytest.raises(SamplingError, match="top_logprobs must be <= 20"):
        kw({"logprobs": True, "top_logprobs": 21})


def test_completion_logprobs() -> None:
    assert kw({"logprobs": 2}, kind="completion")["logprobs"] == 2
    assert kw({"logprobs": 0}, kind="completion")["logprobs"] == 0
    with pytest.raises(SamplingError, match="logprobs must be an integer"):
        kw({"logprobs": True}, kind="completion")
    with pytest.raises(SamplingError, match="chat parameter"):
        kw({"top_logprobs": 1}, kind="completion")


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert kw({"response_format": {"type": "text"}})["structured_outputs"] is None
    assert kw({"response_format": {"type": "json_object"}})["structured_outputs"] == {"json_object": True}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert kw({"response_format": rf})["structured_outputs"] == {"json": schema}


def test_bookkeeping_keys_are_ignored() -> None:
    body = {"model": "m", "messages": [], "user": "u", "stream": False, "metadata": {}, "chat_template_kwargs": {}}
    assert kw(body)["max_tokens"] == DEFAULT_MAX_TOKENS


def test_check_defaults() -> None:
    assert check_defaults({"max_tokens": 64, "temperature": 0.7}) == {"max_tokens": 64, "temperature": 0.7}
    with pytest.raises(SamplingError, match="sampling.temprature: unknown sampling parameter"):
        check_defaults({"temprature": 0.7})
    with pytest.raises(SamplingError, match="sampling.max_tokens must be >= 1"):
        check_defaults({"max_tokens": 0})
    with pytest.raises(SamplingError, match="model"):  # not a sampling default
        check_defaults({"model": "x"})
