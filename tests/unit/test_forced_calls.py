"""A forced tool call (tool_choice `required` or a named function) is a call or that line's error (issue 24, item 5).

vLLM's hermes parser on the tiny tokenizer with known model output, as in test_tools.py: a call whose
JSON holds a raw control character (what the tiny model produced in the issue) is refused by the
parser; the line must then be an error record with the raw text, never a success with the call in content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spoold.engine.tools import ChatTooling, ForcedCallFailed, check_forced_call

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
GOOD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\x01ris\n"}}\n</tool_call>'  # raw control characters


def body(choice: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER], "tool_choice": choice}


def test_check_forced_call_is_pure() -> None:
    check_forced_call("auto", [], "plain text", "stop")  # auto and none may answer in text
    check_forced_call("none", [], GOOD, "stop")
    check_forced_call("required", [(None, "get_weather", '{"city": "Paris"}')], GOOD, "stop")
    with pytest.raises(ForcedCallFailed, match="no tool call could be parsed") as caught:
        check_forced_call("required", [], "<tool_call>{oops", "stop")
    assert "<tool_call>{oops" in str(caught.value) and caught.value.code == "tool_call_failed"
    with pytest.raises(ForcedCallFailed, match="not valid JSON"):
        check_forced_call("named", [(None, "get_weather", '{"city": ')], "x", "stop")
    with pytest.raises(ForcedCallFailed, match="not a JSON object"):
        check_forced_call("named", [(None, "get_weather", "[1]")], "x", "stop")
    with pytest.raises(ForcedCallFailed, match="cut at max_tokens"):
        check_forced_call("required", [], "<tool_call>", "length")
    long = "x" * 5000
    with pytest.raises(ForcedCallFailed) as caught:
        check_forced_call("required", [], long, "stop")
    assert len(str(caught.value)) < 2300


@pytest.fixture(scope="module")
def tokenizer(tiny_state_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_state_dir / "models" / "tiny-random"))


@pytest.mark.vllm
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_vllms_parser_refusing_a_forced_call_makes_the_line_an_error(tokenizer: Any, choice: Any) -> None:
    hermes = ChatTooling("tiny", tokenizer, "hermes", None)
    plan = hermes.plan(body(choice))
    good_ids = tokenizer.encode(GOOD, add_special_tokens=False)
    message, _, _ = hermes.answer(plan, GOOD, good_ids, "stop", [1, 2, 3])
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}

    plan = hermes.plan(body(choice))
    broken_ids = tokenizer.encode(BROKEN, add_special_tokens=False)
    with pytest.raises(ForcedCallFailed, match="no tool call could be parsed") as caught:
        hermes.answer(plan, BROKEN, broken_ids, "stop", [1, 2, 3])
    assert repr(BROKEN) in str(caught.value)  # the raw text is in the line's error message
