"""The vLLM backend on the tiny model: one real engine per session (conftest `vllm_engine`).

The response-shape tests at the top are pure and fast; the rest drive the
real engine through the same add/step interface the runner uses.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from spoold.engine import responses
from spoold.engine.base import EngineRequest, EngineResult

# ---- response bodies (no engine) ---------------------------------------------------------------


def test_chat_logprobs_shape() -> None:
    tokens = [responses.TokenLogprob("Hi", -0.5, [("Hi", -0.5), ("Yo", -1.0)]), responses.TokenLogprob("!", float("-inf"))]
    out = responses.chat_logprobs(tokens)
    first, second = out["content"]
    assert first == {
        "token": "Hi", "logprob": -0.5, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -1.0, "bytes": [89, 111]}],
    }  # fmt: skip
    assert second["logprob"] == responses.LOGPROB_FLOOR  # -inf is not JSON
    json.dumps(out, allow_nan=False)


def test_completion_logprobs_shape() -> None:
    tokens = [responses.TokenLogprob("ab", -0.1, [("ab", -0.1)]), responses.TokenLogprob("c", -0.2, [("d", -0.05)])]
    assert responses.completion_logprobs(tokens) == {
        "text_offset": [0, 2],
        "token_logprobs": [-0.1, -0.2],
        "tokens": ["ab", "c"],
        "top_logprobs": [{"ab": -0.1}, {"d": -0.05}],
    }


def test_bodies_shaped_like_vllms_server() -> None:
    chat = responses.chat_completion("m", [{"text": "x", "finish_reason": "length"}], 3, 1, created=5)
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-") and chat["created"] == 5
    assert chat["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": None, "finish_reason": "length", "stop_reason": None}
    ]
    assert chat["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    text = responses.text_completion("m", [{"text": "a"}, {"text": "b", "stop_reason": "END"}], 2, 2)
    assert text["object"] == "text_completion" and text["id"].startswith("cmpl-")
    assert [c["index"] for c in text["choices"]] == [0, 1] and text["choices"][1]["stop_reason"] == "END"


# ---- the real engine -----------------------------------------------------------------------------


def engine_test(test: Any) -> Any:
    """Needs the session's real engine: slow, and only with the vllm extra."""
    return pytest.mark.slow(pytest.mark.vllm(test))


def chat(line: int, content: str = "Hello", **params: Any) -> EngineRequest:
    return EngineRequest(line, f"c{line}", "chat", {"messages": [{"role": "user", "content": content}], **params}, key=line)


def completion(line: int, prompt: Any = "The quick brown fox", **params: Any) -> EngineRequest:
    return EngineRequest(line, f"p{line}", "completion", {"prompt": prompt, **params}, key=line)


def run(engine: Any, *requests: EngineRequest) -> dict[int, EngineResult]:
    """Add everything, step until all are back; rejected requests come back at once."""
    results: dict[int, EngineResult] = {}
    for request in requests:
        rejected = engine.add(request)
        if rejected is not None:
            results[request.key] = rejected
    while engine.in_flight():
        for result in engine.step():
            assert result.key not in results, "a request came back twice"
            results[result.key] = result
    assert sorted(results) == sorted(r.key for r in requests)
    return results


def one(engine: Any, request: EngineRequest) -> EngineResult:
    return run(engine, request)[request.key]


def tokenizer(state_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(state_dir / "models" / "tiny-random")


@engine_test
def test_chat_body_and_token_counts(tiny_engine: Any, tiny_state_dir: Path) -> None:
    result = one(tiny_engine, chat(1, "Hello there", max_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=2))
    assert result.error is None and result.body is not None
    body = result.body
    assert body["object"] == "chat.completion" and body["model"] == "tiny-random"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] == "length"
    expected_prompt = tokenizer(tiny_state_dir).encode("<s><|user|>\nHello there<|end|>\n<|assistant|>\n", add_special_tokens=False)
    assert result.prompt_tokens == len(expected_prompt)
    assert result.completion_tokens == 8 == len(choice["logprobs"]["content"])
    assert all(len(t["top_logprobs"]) == 2 for t in choice["logprobs"]["content"])
    assert body["usage"] == {"prompt_tokens": result.prompt_tokens, "completion_tokens": 8, "total_tokens": result.prompt_tokens + 8}
    json.dumps(body, allow_nan=False)


@engine_test
def test_completion_body_n_choices_and_logprobs(tiny_engine: Any, tiny_state_dir: Path) -> None:
    result = one(tiny_engine, completion(1, max_tokens=5, n=3, seed=3, temperature=1.0, ignore_eos=True, logprobs=1))
    body = result.body
    assert body is not None and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert result.prompt_tokens == len(tokenizer(tiny_state_dir).encode("The quick brown fox"))  # with BOS
    assert result.completion_tokens == 15 == body["usage"]["completion_tokens"]
    for choice in body["choices"]:
        assert isinstance(choice["text"], str) and choice["finish_reason"] == "length"
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 5


@engine_test
def test_token_id_prompts(tiny_engine: Any) -> None:
    result = one(tiny_engine, completion(1, prompt=[1, 20, 30, 40], max_tokens=3, ignore_eos=True))
    assert result.prompt_tokens == 4 and result.completion_tokens == 3
    bad = one(tiny_engine, completion(2, prompt=[1, 10**9]))
    assert bad.error is not None and bad.error.code == "invalid_request"


@engine_test
def test_seeded_sampling_is_reproducible(tiny_engine: Any) -> None:
    params = {"max_tokens": 24, "temperature": 1.0, "ignore_eos": True}
    a = one(tiny_engine, completion(1, seed=1234, **params)).body
    b = one(tiny_engine, completion(2, seed=1234, **params)).body
    c = one(tiny_engine, completion(3, seed=4321, **params)).body
    assert a and b and c
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["choices"][0]["text"] != c["choices"][0]["text"]


@engine_test
def test_max_tokens_honoured(tiny_engine: Any) -> None:
    result = one(tiny_engine, chat(1, max_tokens=3, ignore_eos=True))
    assert result.completion_tokens == 3 and result.body["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    # the profile's default (16) applies when neither sidecar nor line says
    default = one(tiny_engine, chat(2, ignore_eos=True))
    assert default.completion_tokens == 16


@engine_test
def test_stop_string_honoured(tiny_engine: Any) -> None:
    params = {"max_tokens": 40, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    free = one(tiny_engine, completion(1, **params)).body["choices"][0]["text"]  # type: ignore[index]
    # a plain ASCII stretch of the free text, first seen after a few characters
    k = next(
        i for i in range(3, len(free) - 3) if free[i : i + 3].isascii() and free[i : i + 3].isalpha() and free.find(free[i : i + 3]) == i
    )
    stop = free[k : k + 3]
    stopped = one(tiny_engine, completion(2, stop=[stop], **params)).body["choices"][0]  # type: ignore[index]
    assert stopped["text"] == free[:k]
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == stop


@engine_test
def test_overlong_prompt_and_bad_params_are_line_errors(tiny_engine: Any) -> None:
    results = run(
        tiny_engine,
        completion(1, prompt="word " * 600),
        chat(2, temperature=-1),
        chat(3, tools=[]),
        EngineRequest(4, "c4", "chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, key=4),
        chat(5, max_tokens=2),
    )
    assert results[1].error is not None and results[1].error.code == "context_length_exceeded"
    assert "512" in results[1].error.message
    assert results[2].error is not None and "temperature" in results[2].error.message
    assert results[3].error is not None and "tools" in results[3].error.message
    assert results[4].error is not None and "text content" in results[4].error.message
    assert results[5].error is None and results[5].completion_tokens <= 2  # the engine carried on


@engine_test
def test_long_max_tokens_is_clamped_to_the_context(tiny_engine: Any) -> None:
    result = one(tiny_engine, completion(1, prompt="word " * 100, max_tokens=5000, ignore_eos=True))
    assert result.error is None
    assert result.prompt_tokens + result.completion_tokens == 512


@engine_test
def test_json_schema_response_format(tiny_engine: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["red", "blue"]}},
        "required": ["ok", "tag"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    result = one(tiny_engine, chat(1, max_tokens=100, seed=0, response_format=rf))
    content = result.body["choices"][0]["message"]["content"]  # type: ignore[index]
    parsed = json.loads(content)
    assert isinstance(parsed["ok"], bool) and parsed["tag"] in ("red", "blue") and set(parsed) == {"ok", "tag"}


@engine_test
def test_rolling_window_more_requests_than_window(tiny_engine: Any) -> None:
    window, total = 4, 30
    queue = [chat(i, f"request {i}", max_tokens=1 + i % 7, ignore_eos=True) for i in range(1, total + 1)]
    done: dict[int, EngineResult] = {}
    peak = 0
    while queue or tiny_engine.in_flight():
        while queue and tiny_engine.in_flight() < window:
            assert tiny_engine.add(queue.pop(0)) is None
        peak = max(peak, tiny_engine.in_flight())
        for result in tiny_engine.step():
            assert result.key not in done
            done[result.key] = result
    assert peak == window and sorted(done) == list(range(1, total + 1))
    assert all(r.completion_tokens == 1 + r.key % 7 and r.custom_id == f"c{r.key}" for r in done.values())


@engine_test
def test_abort_all_leaves_nothing_in_flight(tiny_engine: Any) -> None:
    for i in range(1, 9):
        assert tiny_engine.add(completion(i, max_tokens=400, ignore_eos=True)) is None
    tiny_engine.step()
    tiny_engine.abort_all()
    assert tiny_engine.in_flight() == 0
    assert tiny_engine.step() == []
    assert not tiny_engine._llm.has_unfinished_requests()
    after = one(tiny_engine, completion(9, max_tokens=2, ignore_eos=True))  # still usable
    assert after.completion_tokens == 2


@engine_test
def test_abort_by_key_drops_only_those_requests(tiny_engine: Any) -> None:
    """One job cancelled among several: its keys go, the others finish."""
    for i in range(1, 7):
        assert tiny_engine.add(completion(i, max_tokens=3 if i % 2 else 400, ignore_eos=True)) is None
    tiny_engine.step()
    tiny_engine.abort([2, 4, 6])
    assert tiny_engine.in_flight() == 3
    done = {}
    while tiny_engine.in_flight():
        for result in tiny_engine.step():
            done[result.key] = result
    assert sorted(done) == [1, 3, 5] and all(r.completion_tokens == 3 for r in done.values())


@engine_test
def test_unknown_engine_argument_is_a_model_load_error(tiny_state_dir: Path) -> None:
    from spoold.config import Config
    from spoold.engine.base import ModelLoadError
    from spoold.engine.profiles import load_profiles
    from spoold.engine.vllm.backend import VllmEngine

    config = Config.model_validate({"engine": {"state_dir": str(tiny_state_dir), "engine_args": {"no_such_arg": 1}}})
    with pytest.raises(ModelLoadError, match="unknown vLLM engine argument.*no_such_arg"):
        VllmEngine.load(config, load_profiles()["tiny-random"])


@engine_test
def test_requests_reach_vllm_in_one_burst_at_step_and_a_refused_one_is_its_lines_error(tiny_engine: Any, monkeypatch: Any) -> None:
    real = tiny_engine._llm.add_request
    handed: list[str] = []

    def add_request(request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        handed.append(request_id)
        if request_id.endswith("-2"):
            raise ValueError("refused by vLLM\nwith a second line")
        return real(request_id, prompt, params, *args, **kwargs)

    monkeypatch.setattr(tiny_engine._llm, "add_request", add_request)
    for i in range(1, 5):
        assert tiny_engine.add(chat(i, max_tokens=2, ignore_eos=True)) is None
    tiny_engine.abort([4])  # dropped before it was handed over: never reaches vLLM
    assert handed == [] and tiny_engine.in_flight() == 3
    done: dict[int, EngineResult] = {}
    while tiny_engine.in_flight():
        for result in tiny_engine.step():
            done[result.key] = result
        assert len(handed) == 3  # all in the first step's burst
    assert sorted(done) == [1, 2, 3]
    assert done[2].error is not None and done[2].error.code == "invalid_request" and done[2].error.message == "refused by vLLM"
    assert done[1].completion_tokens == done[3].completion_tokens == 2
    assert not tiny_engine._llm.has_unfinished_requests()


@engine_test
def test_auto_window_is_twice_vllms_batch(tiny_engine: Any) -> None:
    seqs = tiny_engine._llm.vllm_config.scheduler_config.max_num_seqs
    assert seqs >= 1 and tiny_engine.auto_window() == 2 * seqs


@engine_test
def test_a_loaded_engine_hides_its_startup_heap_from_the_collector(tiny_engine: Any) -> None:
    assert gc.get_freeze_count() > 10_000  # vLLM, torch, the tokenizer: no full collection walks them


def test_close_gives_the_frozen_heap_back_to_the_collector() -> None:
    from types import SimpleNamespace

    from spoold.engine.vllm.backend import VllmEngine

    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    engine = VllmEngine.__new__(VllmEngine)  # already closed: no engine processes to stop
    engine._llm, engine._pending, engine._outbox, engine._pooling = None, {}, [], SimpleNamespace(close=lambda: None)
    engine.close()
    assert gc.get_freeze_count() == 0
    if was_frozen:  # the session's engines stay as loading left them
        gc.freeze()
