"""tools, tool_choice and reasoning parsers on chat lines (spoold/engine/tools.py).

The pure helpers run without vLLM. The parser wiring runs vLLM's real tool-call and
reasoning parsers on the tiny model's tokenizer with known model output: once on
ChatTooling alone, and once through VllmEngine add/step over a deterministic fake
LLMEngine (a random model rarely calls a tool by itself). Each body must parse as the
OpenAI SDK's ChatCompletion. The real model through the real daemon is in
tests/test_vllm_tools_daemon.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from spoold.engine.base import EngineRequest
from spoold.engine.tools import ChatTooling, ToolsRejected, shape_answer, template_kwargs, tool_choice_kind

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


# ---- pure helpers (no vLLM) ---------------------------------------------------------------------


def test_shape_answer_follows_vllms_full_generator() -> None:
    call = [(None, "f", '{"a": 1}')]
    message, finish = shape_answer(None, None, call, "auto", "stop", with_reasoning=False)
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"][0]["type"] == "function" and message["tool_calls"][0]["id"].startswith("chatcmpl-tool-")
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert shape_answer(None, None, call, "required", "stop", with_reasoning=False)[1] == "tool_calls"
    assert shape_answer(None, None, call, "required", "length", with_reasoning=False)[1] == "length"
    named, finish = shape_answer(None, None, call, "named", "stop", with_reasoning=False)
    assert finish == "stop" and named["content"] == ""  # OpenAI: a forced function keeps "stop"
    text, finish = shape_answer(None, "hi", [], "auto", "length", with_reasoning=False)
    assert (text, finish) == ({"role": "assistant", "content": "hi"}, "length")
    thought, _ = shape_answer("hmm", "4", [], "none", "stop", with_reasoning=True)
    assert thought == {"role": "assistant", "content": "4", "reasoning_content": "hmm", "reasoning": "hmm"}


def test_tool_choice_kinds() -> None:
    assert [tool_choice_kind(c, True) for c in ("none", "auto", "required", NAMED, None)] == [
        "none", "auto", "required", "named", "none"
    ]  # fmt: skip
    assert tool_choice_kind("required", False) == "none"


def test_reasoning_effort_maps_to_template_kwargs_only_on_reasoning_models() -> None:
    assert template_kwargs({"reasoning_effort": "none"}, "m", reasoning=True) == {"reasoning_effort": "none", "enable_thinking": False}
    assert template_kwargs({"reasoning_effort": "high"}, "m", reasoning=True)["enable_thinking"] is True
    mixed = {"reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": False}}
    assert template_kwargs(mixed, "m", reasoning=True)["enable_thinking"] is False  # the line's own kwarg wins
    with pytest.raises(ToolsRejected, match="reasoning_effort: model m is not a reasoning model"):
        template_kwargs({"reasoning_effort": "low"}, "m", reasoning=False)


def test_a_model_without_a_tool_parser_takes_tools_only_with_tool_choice_none() -> None:
    plain = ChatTooling("plain", None, None, None)
    for choice in ("auto", "required", NAMED, None):
        body = chat_body(tools=[WEATHER], **({"tool_choice": choice} if choice else {}))
        with pytest.raises(ToolsRejected, match='model plain has no tool-call parser .* tool_choice "none"'):
            plain.plan(body)
    plan = plain.plan(chat_body(chat_template_kwargs={"x": 1}), {"chat_template_kwargs": {"y": 2}, "temperature": 1})
    assert plan.template_kwargs == {"x": 1} and plan.request is None  # the line's kwargs replace the defaults'


def test_validating_pass_checks_tool_shapes_offline(tmp_path: Path) -> None:
    from spoold.job.validate import validate_file

    from spoold_helpers import chat_line, write_jsonl

    example = Path(__file__).resolve().parents[2] / "examples" / "function-calling.jsonl"
    summary = validate_file(example, "tiny-random")
    assert summary.lines == summary.valid == 8 and summary.invalid == 0
    lines = [
        chat_line("no-name", "x", tools=[{"type": "function", "function": {"parameters": {"type": "object"}}}]),
        chat_line("not-schema", "x", tools=[{"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}]),
        chat_line("nobody", "x", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_time"}}),
        chat_line("ok", "x", tools=[WEATHER], tool_choice="none"),
    ]
    write_jsonl(tmp_path / "t.jsonl", lines)
    summary = validate_file(tmp_path / "t.jsonl", "tiny-random")
    assert [(e.line, e.code, e.message) for e in summary.errors] == [
        (1, "invalid_request", "tools[0].function.name must be a non-empty string"),
        (2, "invalid_request", "tools[0].function.parameters is not a valid JSON schema at required: 'a' is not of type 'array'"),
        (3, "invalid_request", "tool_choice names the function 'get_time', which is not among the tools (get_weather)"),
    ]
    assert summary.valid == 1


def test_sidecar_sampling_takes_template_kwargs_and_reasoning_effort() -> None:
    from spoold.errors import SidecarError
    from spoold.job.sidecar import parse_sidecar

    sidecar = parse_sidecar("sampling:\n  chat_template_kwargs: {enable_thinking: false}\n  reasoning_effort: low\n")
    assert sidecar.sampling == {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "low"}
    with pytest.raises(SidecarError, match="sampling: reasoning_effort must be one of none, minimal"):
        parse_sidecar("sampling:\n  reasoning_effort: lots\n")
    with pytest.raises(SidecarError, match="tools: unknown sampling parameter"):
        parse_sidecar("sampling:\n  tools: []\n")


# ---- vLLM's parsers on the tiny tokenizer, known output -----------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_state_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_state_dir / "models" / "tiny-random"))


def answer(tooling: ChatTooling, body: dict[str, Any], text: str, finish: str = "stop") -> tuple[dict[str, Any], str]:
    plan = tooling.plan(body)
    ids = tooling._tokenizer.encode(text, add_special_tokens=False)
    message, finish, thought = tooling.answer(plan, text, ids, finish, [1, 2, 3])
    THOUGHT.append(thought)
    return message, finish


THOUGHT: list[int] = []
"""Reasoning tokens of each answer() above, latest last."""


@pytest.mark.vllm
def test_hermes_parser_turns_text_into_tool_calls(tokenizer: Any) -> None:
    hermes = ChatTooling("tiny", tokenizer, "hermes", None)
    message, finish = answer(hermes, chat_body(tools=[WEATHER]), CALL_TEXT)  # tool_choice defaults to auto
    assert finish == "tool_calls" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert "reasoning_content" not in message  # no reasoning parser, no reasoning field

    message, finish = answer(hermes, chat_body(tools=[WEATHER], tool_choice="auto"), "Just text.", "length")
    assert (message, finish) == ({"role": "assistant", "content": "Just text."}, "length")

    message, finish = answer(hermes, chat_body(tools=[WEATHER], tool_choice=NAMED), CALL_TEXT)
    assert finish == "stop" and message["tool_calls"][0]["function"]["name"] == "get_weather"
    message, finish = answer(hermes, chat_body(tools=[WEATHER], tool_choice="required"), CALL_TEXT)
    assert finish == "tool_calls" and len(message["tool_calls"]) == 1

    message, finish = answer(hermes, chat_body(tools=[WEATHER], tool_choice="none"), CALL_TEXT)
    assert (message, finish) == ({"role": "assistant", "content": CALL_TEXT}, "stop")  # none: never parsed


@pytest.mark.vllm
def test_forced_tool_choice_is_constrained_to_the_functions_schema(tokenizer: Any) -> None:
    hermes = ChatTooling("tiny", tokenizer, "hermes", None)
    for choice in ("required", NAMED):
        plan = hermes.plan(chat_body(tools=[WEATHER], tool_choice=choice, response_format={"type": "json_object"}))
        assert plan.structured_outputs is not None and set(plan.structured_outputs) == {"structural_tag"}
        tag = json.loads(plan.structured_outputs["structural_tag"])
        assert '"enum": ["Paris", "Rome"]' in json.dumps(tag)  # strict level parameter: the arguments' schema is in
        assert plan.skip_special_tokens is False  # hermes needs its tags in the text
        assert plan.tools == [hermes.plan(chat_body(tools=[WEATHER])).tools[0]] and plan.tools[0]["function"]["name"] == "get_weather"
    none = hermes.plan(chat_body(tools=[WEATHER], tool_choice="none"))
    assert none.structured_outputs is None and none.request is None and none.tools is not None  # rendered, not parsed
    with pytest.raises(ToolsRejected, match="reasoning_effort"):
        hermes.plan(chat_body(reasoning_effort="low"))


@pytest.mark.vllm
def test_qwen3_reasoning_parser_splits_the_thinking(tokenizer: Any) -> None:
    qwen = ChatTooling("thinker", tokenizer, "hermes", "qwen3")
    text = "<think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4."
    message, finish = answer(qwen, chat_body(), text)
    assert finish == "stop"
    assert message["reasoning_content"] == message["reasoning"] == "\nThe user wants 2+2. That is 4.\n"
    assert message["content"] == "\n\nThe answer is 4."
    assert THOUGHT[-1] == len(tokenizer.encode("\nThe user wants 2+2. That is 4.\n", add_special_tokens=False))

    message, finish = answer(qwen, chat_body(tools=[WEATHER]), "<think>Call the tool.</think>" + CALL_TEXT)
    assert message["reasoning_content"] == "Call the tool." and finish == "tool_calls"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"])["city"] == "Paris"

    plan = qwen.plan(chat_body(reasoning_effort="none"))
    assert plan.template_kwargs == {"reasoning_effort": "none", "enable_thinking": False}


# ---- the wiring through VllmEngine add/step, over a fake LLMEngine ------------------------------


class FakeLLM:
    """Answers each request with scripted text (by the prompt's user message), finish_reason "stop"."""

    def __init__(self, tokenizer: Any, script: dict[str, str]) -> None:
        self.tokenizer, self.script = tokenizer, script
        self.model_config = SimpleNamespace(max_model_len=2048, get_pooling_task=lambda tasks: None)
        self.vllm_config = SimpleNamespace(model_config=self.model_config)
        self.params: dict[str, Any] = {}
        self.prompts: dict[str, str] = {}
        self._queue: list[str] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def add_request(self, request_id: str, prompt: dict[str, Any], params: Any) -> None:
        self.prompts[request_id] = self.tokenizer.decode(prompt["prompt_token_ids"])
        self.params[request_id] = params
        self._queue.append(request_id)

    def step(self) -> list[Any]:
        outputs = []
        for rid in self._queue:
            text = next(answer for question, answer in self.script.items() if question in self.prompts[rid])
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            done = SimpleNamespace(index=0, text=text, token_ids=ids, finish_reason="stop", stop_reason=None, logprobs=None)
            outputs.append(SimpleNamespace(request_id=rid, finished=True, outputs=[done], prompt_token_ids=[1, 2, 3]))
        self._queue = []
        return outputs

    def abort_request(self, ids: list[str]) -> None:
        self._queue = [r for r in self._queue if r not in ids]


@pytest.mark.vllm
def test_engine_wiring_renders_constrains_and_parses(tokenizer: Any) -> None:
    from openai.types.chat import ChatCompletion

    from spoold.engine.vllm.backend import VllmEngine
    from spoold.tinymodel import CHAT_TEMPLATE

    script = {"named?": CALL_TEXT, "auto?": CALL_TEXT, "none?": CALL_TEXT, "think?": "<think>Hmm.</think>Four."}
    llm = FakeLLM(tokenizer, script)
    engine = VllmEngine("tiny", llm, {"max_tokens": 64}, tool_call_parser="hermes", chat_template=CHAT_TEMPLATE)
    lines = [
        ("named?", {"tools": [WEATHER], "tool_choice": NAMED}),
        ("auto?", {"tools": [WEATHER]}),
        ("none?", {"tools": [WEATHER], "tool_choice": "none"}),
        ("think?", {"reasoning_effort": "high"}),
        ("think?", {}),
    ]
    requests = [EngineRequest(i, f"c{i}", "chat", {"messages": [{"role": "user", "content": q}], **extra}, key=i)
                for i, (q, extra) in enumerate(lines)]  # fmt: skip
    refused = [r for r in (engine.add(q) for q in requests) if r is not None]
    results = {r.custom_id: r for r in [*refused, *engine.step()]}

    assert results["c3"].error is not None and results["c3"].error.code == "invalid_request"
    assert "reasoning_effort: model tiny is not a reasoning model" in results["c3"].error.message
    bodies = {cid: ChatCompletion.model_validate(r.body) for cid, r in results.items() if r.error is None}
    named, auto, none, plain = bodies["c0"].choices[0], bodies["c1"].choices[0], bodies["c2"].choices[0], bodies["c4"].choices[0]
    assert named.finish_reason == "stop" and named.message.tool_calls[0].function.name == "get_weather"
    assert auto.finish_reason == "tool_calls" and json.loads(auto.message.tool_calls[0].function.arguments)["city"] == "Paris"
    assert none.finish_reason == "stop" and none.message.content == CALL_TEXT and not none.message.tool_calls
    assert plain.message.content == "<think>Hmm.</think>Four."  # no reasoning parser: text as generated
    assert bodies["c4"].usage is not None and bodies["c4"].usage.completion_tokens_details is None

    prompts = list(llm.prompts.values())
    assert all('"name": "get_weather"' in p for p in prompts[:3])  # the template rendered the tools
    params = list(llm.params.values())
    assert params[0].structured_outputs.structural_tag is not None  # named: constrained
    assert params[1].structured_outputs is not None  # auto at strict level parameter: calls it makes are valid
    assert params[2].structured_outputs is None and params[2].skip_special_tokens is True  # none: free text
    assert results["c0"].completion_tokens == len(tokenizer.encode(CALL_TEXT, add_special_tokens=False))


@pytest.mark.vllm
def test_engine_wiring_with_a_reasoning_parser(tokenizer: Any) -> None:
    from openai.types.chat import ChatCompletion

    from spoold.engine.vllm.backend import VllmEngine

    llm = FakeLLM(tokenizer, {"think?": "<think>Hmm, 2+2.</think>Four.", "call?": "<think>Use it.</think>" + CALL_TEXT})
    engine = VllmEngine("thinker", llm, {}, tool_call_parser="hermes", reasoning_parser="qwen3")
    lines = [("think?", {"reasoning_effort": "high"}), ("call?", {"tools": [WEATHER]}), ("think?", {"reasoning_effort": "none"})]
    for i, (question, extra) in enumerate(lines):
        assert engine.add(EngineRequest(i, f"c{i}", "chat", {"messages": [{"role": "user", "content": question}], **extra}, key=i)) is None
    results = {r.custom_id: r for r in engine.step()}
    think = ChatCompletion.model_validate(results["c0"].body)
    message = think.choices[0].message
    assert message.content == "Four." and message.model_extra == {"reasoning_content": "Hmm, 2+2.", "reasoning": "Hmm, 2+2."}
    assert think.usage is not None and think.usage.completion_tokens_details is not None
    assert think.usage.completion_tokens_details.reasoning_tokens == len(tokenizer.encode("Hmm, 2+2.", add_special_tokens=False))
    assert think.usage.completion_tokens == len(tokenizer.encode("<think>Hmm, 2+2.</think>Four.", add_special_tokens=False))
    call = ChatCompletion.model_validate(results["c1"].body).choices[0]
    assert call.finish_reason == "tool_calls" and call.message.model_extra["reasoning_content"] == "Use it."
    assert call.message.tool_calls and call.message.tool_calls[0].function.name == "get_weather"
    # reasoning_effort "none" is enable_thinking: false: vLLM's qwen3 parser then reads no thinking at all
    off = ChatCompletion.model_validate(results["c2"].body).choices[0].message
    assert off.content == "<think>Hmm, 2+2.</think>Four." and off.model_extra["reasoning_content"] is None


@pytest.mark.vllm
def test_chat_render_ids_match_transformers_encode(tokenizer: Any) -> None:
    """chat.render encodes with the fast tokenizer's Rust encoder: the very ids transformers' encode gives."""
    from spoold.engine import chat
    from spoold.tinymodel import CHAT_TEMPLATE

    bodies = [
        {"messages": [{"role": "user", "content": "Hi there, café ☕ 123"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "two\nlines"}]}]},
        {"messages": [{"role": "user", "content": "  leading spaces and <|tags|>"}], "add_generation_prompt": False},
    ]
    for body in bodies:
        ids = chat.render(tokenizer, body, chat_template=CHAT_TEMPLATE)
        text = tokenizer.apply_chat_template([chat.text_message(m) for m in body["messages"]], tokenize=False,
                                             add_generation_prompt=body.get("add_generation_prompt", True), chat_template=CHAT_TEMPLATE)  # fmt: skip
        assert ids == list(tokenizer.encode(text, add_special_tokens=False)) and ids
