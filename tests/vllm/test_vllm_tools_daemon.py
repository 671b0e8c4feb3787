"""Function calling through the real `spoold run` on real vLLM (tiny-random, whose profile names the hermes parser).

One daemon, one engine load: the shipped examples/function-calling job (named, "required",
"auto" and "none" lines) and a job of lines that must fail one by one. Every named and
"required" answer must be a call whose arguments parse and validate against the function's
schema; every body must parse as the OpenAI SDK's ChatCompletion.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from spoold_helpers import SpooldProcess, assert_exactly_once, chat_line, drop_job, jsonl_lines

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOOL = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"],
    "additionalProperties": False}}}  # fmt: skip


def test_function_calling_job_through_the_real_daemon(tmp_path: Path, tiny_state_dir: Path) -> None:
    from openai.types.chat import ChatCompletion

    example = [json.loads(line) for line in jsonl_lines(EXAMPLES / "function-calling.jsonl")]
    bad = [
        chat_line("effort", "think", reasoning_effort="low"),  # tiny-random is no reasoning model: the engine says so
        chat_line("schema", "x", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]),
        chat_line("unnamed", "x", tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        chat_line("kwargs", "hi", max_tokens=4, chat_template_kwargs={"enable_thinking": False}),
        chat_line("one-of-ten", "pick", tools=[TOOL], tool_choice="required", parallel_tool_calls=False, max_tokens=120, seed=3),
    ]
    engine = {"backend": "vllm", "state_dir": str(tiny_state_dir), "window": 16, "max_attempts": 1}
    with SpooldProcess(tmp_path, engine=engine, watch={"settle_seconds": 0.3, "poll_interval": 0.3}) as d:
        drop_job(d.inbox, "fc", example, yaml.safe_load((EXAMPLES / "function-calling.yaml").read_text()))
        drop_job(d.inbox, "fc-bad", bad, {"model": "tiny-random", "sampling": {"chat_template_kwargs": {"enable_thinking": True}}})
        d.start({"VLLM_CPU_KVCACHE_SPACE": "1"})
        job, bad_job = d.wait_finished("fc", timeout=300), d.wait_finished("fc-bad", timeout=300)

    assert job.parent.name == "done" and (job / "errors.jsonl").read_text() == ""
    assert_exactly_once(job, [line["custom_id"] for line in example])
    requests = {line["custom_id"]: line["body"] for line in example}
    outputs = {r["custom_id"]: r["response"]["body"] for r in map(json.loads, jsonl_lines(job / "output.jsonl"))}
    kinds = set()
    for custom_id, raw in outputs.items():
        body, request = ChatCompletion.model_validate(raw), requests[custom_id]
        choice, tool_choice = body.choices[0], request["tool_choice"]
        assert body.usage is not None and body.usage.completion_tokens > 0
        if tool_choice == "none":
            kinds.add("none")
            assert isinstance(choice.message.content, str) and not choice.message.tool_calls
            continue
        if tool_choice == "auto":
            kinds.add("auto")
            assert choice.finish_reason in ("stop", "length", "tool_calls")
            assert (choice.finish_reason == "tool_calls") == bool(choice.message.tool_calls)
            continue
        kinds.add("required" if tool_choice == "required" else "named")
        assert choice.finish_reason == ("tool_calls" if tool_choice == "required" else "stop"), custom_id
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in request["tools"]}
        assert choice.message.tool_calls, f"{custom_id}: {choice.message.content!r}"
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.id
            if tool_choice != "required":
                assert call.function.name == tool_choice["function"]["name"]
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert kinds == {"none", "auto", "required", "named"}

    assert bad_job.parent.name == "done"
    errors = {e["custom_id"]: e["error"] for e in map(json.loads, jsonl_lines(bad_job / "errors.jsonl"))}
    assert set(errors) == {"effort", "schema", "unnamed"}
    assert (
        errors["effort"]["message"]
        == "reasoning_effort: model tiny-random is not a reasoning model (its profile names no reasoning_parser)"
    )
    assert errors["schema"]["message"].startswith("tools[0].function.parameters is not a valid JSON schema")
    assert errors["unnamed"]["message"] == "tool_choice names the function 'nope', which is not among the tools (pick)"
    good = {r["custom_id"]: r["response"]["body"] for r in map(json.loads, jsonl_lines(bad_job / "output.jsonl"))}
    assert ChatCompletion.model_validate(good["kwargs"]).choices[0].message.content is not None
    (call,) = ChatCompletion.model_validate(good["one-of-ten"]).choices[0].message.tool_calls or []
    assert 0 <= json.loads(call.function.arguments)["n"] <= 9
