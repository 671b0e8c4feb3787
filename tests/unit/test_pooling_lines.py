"""Embeddings, score and rerank lines offline: parsing, body checks, the model's kinds, profiles (no engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spoold.cli.validate import validate_command
from spoold.config import Config
from spoold.engine.base import EngineRequest
from spoold.engine.profiles import TASK_KINDS, ModelProfile, load_profiles, resolve_model
from spoold.errors import ConfigError
from spoold.job.lines import LineError, parse_line
from spoold.job.validate import validate_file

EMBED = TASK_KINDS["embed"]
GENERATE = TASK_KINDS["generate"]


def parse(obj: Any, serves: frozenset[str] | None = EMBED, model: str = "tiny-embed") -> EngineRequest | LineError | None:
    return parse_line(json.dumps(obj).encode(), 4, model, serves=serves)


@pytest.mark.parametrize(
    ("url", "body", "kind"),
    [
        ("/v1/embeddings", {"input": "a string", "user": "u1"}, "embeddings"),
        ("/v1/embeddings", {"input": ["two", "strings"], "encoding_format": "base64"}, "embeddings"),
        ("/v1/embeddings", {"input": [1, 2, 3], "dimensions": 64}, "embeddings"),
        ("/v1/embeddings", {"input": [[1, 2], [3]], "model": "tiny-embed"}, "embeddings"),
        ("/v1/embeddings", {"messages": [{"role": "user", "content": "chat-style"}]}, "embeddings"),
        ("/v1/embeddings", {"input": [{"role": "user", "content": "one conversation as input"}]}, "embeddings"),
        ("/v1/score", {"queries": "q", "documents": ["a", "b"]}, "score"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d"]}, "score"),
        ("/v1/score", {"data_1": "q", "data_2": "d"}, "score"),
        ("/v1/score", {"queries": "q", "items": ["a"]}, "score"),
        ("/v1/rerank", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}, "rerank"),
        ("/v1/rerank", {"query": "q", "documents": "only one"}, "rerank"),
    ],
)
def test_pooling_lines_parse(url: str, body: dict[str, Any], kind: str) -> None:
    r = parse({"custom_id": "x", "method": "POST", "url": url, "body": body})
    assert isinstance(r, EngineRequest) and r.kind == kind and r.body == body and r.custom_id == "x"


@pytest.mark.parametrize(
    ("url", "body", "words"),
    [
        ("/v1/embeddings", {}, "input is required"),
        ("/v1/embeddings", {"input": []}, "input must be"),
        ("/v1/embeddings", {"input": [1, "a"]}, "input must be"),
        ("/v1/embeddings", {"input": [[1], []]}, "input must be"),
        ("/v1/embeddings", {"input": [-1]}, "input must be"),
        ("/v1/embeddings", {"input": "x", "messages": [{"role": "user", "content": "x"}]}, "not both"),
        ("/v1/embeddings", {"messages": ["x"]}, "messages must be"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "bytes"}, "encoding_format must be float or base64"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions must be a positive integer"),
        ("/v1/embeddings", {"input": "x", "dimensions": True}, "dimensions must be a positive integer"),
        ("/v1/embeddings", {"input": "x", "user": 5}, "user must be a string"),
        ("/v1/embeddings", {"input": "x", "embed_dtype": "int4"}, "embed_dtype"),
        ("/v1/score", {"queries": "q"}, "exactly one pair"),
        ("/v1/score", {"queries": "q", "documents": ["a"], "text_1": "x", "text_2": "y"}, "exactly one pair"),
        ("/v1/score", {"queries": ["a", "b"], "documents": ["c", "d", "e"]}, "1:1, 1:N or N:N"),
        ("/v1/score", {"queries": "q", "documents": []}, "documents must not be empty"),
        ("/v1/score", {"queries": 5, "documents": ["a"]}, "queries must be"),
        ("/v1/rerank", {"query": "q"}, "needs query and documents"),
        ("/v1/rerank", {"query": ["q"], "documents": ["a"]}, "query must be a string"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": "x"}, "max_tokens_per_doc"),
    ],
)
def test_bad_pooling_bodies_are_line_errors_with_a_reason(url: str, body: dict[str, Any], words: str) -> None:
    r = parse({"custom_id": "x", "url": url, "body": body})
    assert isinstance(r, LineError) and r.code == "invalid_request" and words in r.message and r.custom_id == "x"


def test_shorthand_input_is_an_embeddings_line() -> None:
    r = parse({"input": "bare body"})
    assert isinstance(r, EngineRequest) and r.kind == "embeddings" and r.custom_id == "line-4"


@pytest.mark.parametrize(
    ("obj", "serves", "model", "url"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, EMBED, "tiny-embed", "/v1/chat/completions"),
        ({"url": "/v1/completions", "body": {"prompt": "x"}}, EMBED, "tiny-embed", "/v1/completions"),
        ({"input": "x"}, GENERATE, "tiny-random", "/v1/embeddings"),
        ({"url": "/v1/rerank", "body": {"query": "q", "documents": ["a"]}}, GENERATE, "qwen3-4b", "/v1/rerank"),
        ({"url": "/v1/embeddings", "body": {"input": "x"}}, TASK_KINDS["score"], "bge-reranker-v2-m3", "/v1/embeddings"),
    ],
)
def test_a_kind_the_model_cannot_serve_names_the_model_and_the_kind(obj: Any, serves: frozenset[str], model: str, url: str) -> None:
    r = parse(obj, serves, model)
    assert isinstance(r, LineError) and r.code == "unsupported_kind"
    assert r.message == f"model {model} cannot serve {url} lines"


def test_without_known_kinds_the_engine_decides() -> None:
    assert isinstance(parse({"input": "x"}, serves=None), EngineRequest)
    assert isinstance(parse({"prompt": "x"}, serves=None), EngineRequest)


def test_profiles_say_what_the_model_does() -> None:
    profiles = load_profiles()
    assert profiles["tiny-random"].task == "generate" and profiles["tiny-random"].serves == GENERATE
    embed = profiles["tiny-embed"]
    assert embed.serves == {"embeddings", "score", "rerank"} and embed.engine_args["runner"] == "pooling"
    for name, task in (
        ("qwen3-embedding-0.6b", "embed"),
        ("bge-m3", "embed"),
        ("bge-reranker-v2-m3", "score"),
        ("ms-marco-minilm-l6-v2", "score"),
    ):
        assert profiles[name].task == task and "/" in profiles[name].model and profiles[name].engine_args["max_model_len"], name
    assert profiles["bge-reranker-v2-m3"].serves == profiles["tiny-rerank"].serves == {"score", "rerank"}
    # A pooling task runs on the pooling runner by default; a generating profile cannot name it.
    assert ModelProfile(name="e", model="x", task="embed").engine_args == {"runner": "pooling"}
    with pytest.raises(ValueError, match="set task to embed or score"):
        ModelProfile(name="g", model="x", engine_args={"runner": "pooling"})


def test_a_local_model_directory_has_no_known_task(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path), load_profiles()).serves is None


def test_a_bad_task_in_a_profile_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("model: x\ntask: classify\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="task"):
        load_profiles([tmp_path])


def test_validating_pass_and_spoold_validate_check_the_new_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        {"custom_id": "e1", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}},
        {"input": "shorthand"},
        {"custom_id": "s1", "url": "/v1/score", "body": {"queries": "q", "documents": ["a"]}},
        {"custom_id": "r1", "url": "/v1/rerank", "body": {"query": "q", "documents": ["a", "b"]}},
        {"custom_id": "c1", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "bad", "url": "/v1/embeddings", "body": {"input": "x", "encoding_format": "hex"}},
    ]
    src = tmp_path / "job.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    summary = validate_file(src, "tiny-embed", serves=EMBED)
    assert (summary.lines, summary.valid, summary.invalid) == (6, 4, 2)
    assert [(e.line, e.code) for e in summary.errors] == [(5, "unsupported_kind"), (6, "invalid_request")]

    (tmp_path / "job.yaml").write_text("model: tiny-embed\n", encoding="utf-8")
    assert validate_command(Config(), src, None) == 0
    out = capsys.readouterr().out
    assert "line 5: unsupported_kind: model tiny-embed cannot serve /v1/chat/completions lines" in out
    assert "line 6: invalid_request: encoding_format must be float or base64" in out
    assert "6 requests for model tiny-embed, 4 valid, 2 invalid" in out

    (tmp_path / "job.yaml").write_text("model: tiny-random\n", encoding="utf-8")  # a generating model: 5 of 6 are wrong
    assert validate_command(Config(), src, None) == 0
    assert "1 valid, 5 invalid" in capsys.readouterr().out


@pytest.mark.slow
def test_the_pass_done_ahead_of_time_knows_the_models_kinds(tmp_path: Path) -> None:
    from spoold.job.prevalidate import Prevalidator

    from spoold_helpers import wait_for

    big = tmp_path / "big.jsonl"
    lines = [{"custom_id": f"e{i}", "input": "x" * 200} for i in range(6000)]
    lines.append({"custom_id": "chat", "messages": [{"role": "user", "content": "x"}]})
    big.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    pre = Prevalidator()
    try:
        pre.offer(big, "tiny-embed", EMBED)
        wait_for(lambda: pre.finished(big, "tiny-embed"), 60, what="the background pass")
        summary = pre.take(big, "tiny-embed", lambda: True)
        assert summary == validate_file(big, "tiny-embed", serves=EMBED)
        assert summary is not None and (summary.valid, summary.invalid) == (6000, 1)
        assert summary.errors[0].code == "unsupported_kind"
    finally:
        pre.close()
