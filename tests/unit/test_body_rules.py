"""One set of request-body rules, checked offline before inference and by the engine's sampling mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spoold.engine.base import EngineRequest
from spoold.engine.sampling import SamplingError, sampling_kwargs
from spoold.job.lines import LineError, parse_line
from spoold.job.validate import validate_file

from spoold_helpers import SpooldProcess, chat_line, child_env, drop_job, read_records, write_jsonl

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("chat", {"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ("chat", {"top_p": 7}, "top_p must be <= 1, got 7"),
    ("chat", {"max_tokens": 1e30}, "max_tokens must be <= 2147483647, got 1e+30"),
    ("chat", {"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
    ("chat", {"max_completion_tokens": "64"}, "max_completion_tokens must be an integer, got '64'"),
    ("chat", {"n": 0}, "n must be >= 1, got 0"),
    ("chat", {"stop": ["a", 3]}, "stop must be a string or a list of strings"),
    ("chat", {"seed": 1.5}, "seed must be an integer, got 1.5"),
    ("chat", {"logit_bias": {"x": 1}}, "logit_bias keys must be token ids, got 'x'"),
    ("chat", {"logprobs": 3}, "logprobs must be true or false, got 3"),
    ("chat", {"top_logprobs": 50, "logprobs": True}, "top_logprobs must be <= 20, got 50"),
    ("chat", {"response_format": {"type": "yaml"}}, "response_format.type must be text, json_object or json_schema, got 'yaml'"),
    (
        "chat",
        {"response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format.json_schema.schema must be a JSON schema object",
    ),
    ("chat", {"functions": []}, "functions is not supported by spoold's batch engine"),
    ("chat", {"tools": []}, "tools must be a non-empty list of tools (or left out)"),
    ("chat", {"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name must be a non-empty string"),
    ("chat", {"tools": [{"type": "retrieval"}]}, 'tools[0] must be an object with type "function"'),
    (
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "object"}}]},
        "tools[0].function.parameters must be a JSON schema object, got 'object'",
    ),
    (
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
        "tools[0].function.parameters is not a valid JSON schema at type: 'objekt' is not valid under any of the given schemas",
    ),
    ("chat", {"tools": [{"function": {"name": "f"}}, {"function": {"name": "f"}}]}, "tools names the function 'f' twice"),
    ("chat", {"tool_choice": "required"}, "tool_choice 'required' needs tools"),
    (
        "chat",
        {"tool_choice": "always", "tools": [{"function": {"name": "f"}}]},
        'tool_choice must be none, auto, required or {"type": "function", "function": {"name": "..."}}, got \'always\'',
    ),
    (
        "chat",
        {"tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": [{"function": {"name": "f"}}]},
        "tool_choice names the function 'g', which is not among the tools (f)",
    ),
    (
        "chat",
        {"tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice names the function 'g' but the request has no tools",
    ),
    (
        "chat",
        {"tool_choice": {"type": "function"}, "tools": [{"function": {"name": "f"}}]},
        'tool_choice must be none, auto, required or {"type": "function", "function": {"name": "..."}}',
    ),
    ("chat", {"parallel_tool_calls": "yes"}, "parallel_tool_calls must be true or false, got 'yes'"),
    (
        "chat",
        {"reasoning_effort": "extreme"},
        "reasoning_effort must be one of none, minimal, low, medium, high, xhigh, max, got 'extreme'",
    ),
    ("chat", {"chat_template_kwargs": ["enable_thinking"]}, 'chat_template_kwargs must be an object (e.g. {"enable_thinking": false})'),
    ("completion", {"tools": [{"function": {"name": "f"}}]}, "tools and tool_choice are chat parameters"),
    ("chat", {"temprature": 0.5}, "unknown request parameter 'temprature'"),
    ("completion", {"logprobs": True}, "logprobs must be an integer, got True"),
    ("completion", {"top_logprobs": 2}, "top_logprobs is a chat parameter; completions take logprobs: <int>"),
    ("completion", {"presence_penalty": "high"}, "presence_penalty must be a number, got 'high'"),
]
# NaN never reaches these rules from a line: JSON has no NaN, so the line is `invalid_json` (tests/test_poison_lines.py).

GOOD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("chat", {"temperature": 0, "top_p": 1, "max_tokens": 64.0, "stop": "END", "seed": 7, "logit_bias": {"17": -5}}),
    ("chat", {"logprobs": True, "top_logprobs": 3, "response_format": {"type": "json_object"}, "user": "u1"}),
    ("chat", {"temperature": None, "max_completion_tokens": 9, "n": 2, "stream": False}),
    (
        "chat",
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        },
    ),
    ("chat", {"tools": [{"function": {"name": "f", "description": "d", "strict": True}}], "tool_choice": "required"}),
    ("chat", {"tool_choice": "none", "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": False}}),
    ("completion", {"logprobs": 2, "min_tokens": 1, "ignore_eos": True, "stop_token_ids": [2]}),
]


def _line(kind: str, extra: dict[str, Any]) -> bytes:
    body = {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"}
    url = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    return json.dumps({"custom_id": "c", "url": url, "body": {**body, **extra}}, allow_nan=True).encode()


@pytest.mark.parametrize(("kind", "extra", "message"), BAD_BODIES)
def test_bad_value_is_the_lines_error_with_the_engines_own_message(kind: str, extra: dict[str, Any], message: str) -> None:
    parsed = parse_line(_line(kind, extra), 4, "m")
    assert isinstance(parsed, LineError)
    assert (parsed.code, parsed.message, parsed.line, parsed.custom_id) == ("invalid_request", message, 4, "c")
    body = json.loads(_line(kind, extra))["body"]
    with pytest.raises(SamplingError) as caught:
        sampling_kwargs(body, kind, 3, 512)  # type: ignore[arg-type]
    assert str(caught.value) == message  # the same rule, the same sentence, offline and in the engine


@pytest.mark.parametrize(("kind", "extra"), GOOD_BODIES)
def test_good_bodies_pass_both(kind: str, extra: dict[str, Any]) -> None:
    parsed = parse_line(_line(kind, extra), 1, "m")
    assert isinstance(parsed, EngineRequest)
    assert sampling_kwargs(parsed.body, kind, 3, 512)["max_tokens"] >= 1  # type: ignore[arg-type]


def test_shorthand_lines_are_checked_too() -> None:
    parsed = parse_line(b'{"prompt": "x", "temperature": -1}', 2, "m")
    assert isinstance(parsed, LineError) and parsed.message == "temperature must be >= 0, got -1"


def test_cross_key_rule_waits_for_the_merged_defaults() -> None:
    """top_logprobs without logprobs may get logprobs: true from the sidecar, so only the engine mapping judges it."""
    parsed = parse_line(_line("chat", {"top_logprobs": 2}), 1, "m")
    assert isinstance(parsed, EngineRequest)
    assert sampling_kwargs({**{"logprobs": True}, **parsed.body}, "chat", 3, 512)["logprobs"] == 2
    with pytest.raises(SamplingError, match="top_logprobs needs logprobs: true"):
        sampling_kwargs(parsed.body, "chat", 3, 512)


def test_the_rules_do_not_import_vllm() -> None:
    code = "import sys, spoold.job.lines, spoold.job.validate, spoold.engine.sampling; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    assert out.stdout.strip() == "False"


ISSUE_FILE = [
    chat_line("hot", "a", temperature="hot"),
    chat_line("wide", "b", top_p=7),
    chat_line("huge", "c", max_tokens=1e30),
    chat_line("fine", "d", max_tokens=3),
]


def test_validating_pass_counts_bad_values_as_invalid(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "j.jsonl", ISSUE_FILE)
    summary = validate_file(tmp_path / "j.jsonl", "tiny-random")
    assert (summary.lines, summary.valid, summary.invalid) == (4, 1, 3)
    assert [(e.line, e.message) for e in summary.errors] == [
        (1, "temperature must be a number, got 'hot'"),
        (2, "top_p must be <= 1, got 7"),
        (3, "max_tokens must be <= 2147483647, got 1e+30"),
    ]


@pytest.mark.slow
def test_cli_validate_and_echo_daemon_reject_bad_values(tmp_path: Path) -> None:
    """`spoold validate` reports them, and the echo backend (which checks nothing itself) never answers them."""
    write_jsonl(tmp_path / "j.jsonl", ISSUE_FILE)
    with SpooldProcess(tmp_path / "d") as d:
        out = d.cli("validate", str(tmp_path / "j.jsonl"), check=True).stdout
        assert "line 1: invalid_request: temperature must be a number, got 'hot'" in out
        assert "line 2: invalid_request: top_p must be <= 1, got 7" in out
        assert "line 3: invalid_request: max_tokens must be <= 2147483647" in out
        assert "4 requests for model tiny-random, 1 valid, 3 invalid" in out
        d.start()
        drop_job(d.inbox, "issue", ISSUE_FILE, {})
        job = d.wait_finished("issue")
        assert d.stop() == 0
    by_id = {r["custom_id"]: r for r in read_records(job)}
    assert by_id["fine"]["error"] is None and by_id["fine"]["response"]["status_code"] == 200
    for cid, line in (("hot", 1), ("wide", 2), ("huge", 3)):
        assert by_id[cid]["response"] is None
        assert by_id[cid]["error"]["code"] == "invalid_request" and by_id[cid]["error"]["line"] == line
