"""The s3, postgres and label_studio handlers' settings, missing extras and record helpers (no server needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from spoold.errors import ConfigError
from spoold.handlers.registry import build_handler
from spoold.handlers.result_lines import answer_text, finished_at, prompt_of, requests_by_custom_id, usage_tokens
from spoold.service.handler_runs import HandlerDispatcher

from handler_helpers import handler_config

S3 = {"name": "archive", "type": "s3", "settings": {"bucket": "results", "prefix": "spoold/"}}
PG = {"name": "db", "type": "postgres", "settings": {"table": "public.results"}}


def _ls(tmp_path: Path) -> dict:
    (tmp_path / "token").write_text("tok\n")
    return {
        "name": "review",
        "type": "label_studio",
        "settings": {"url": "http://ls:8080/", "token_file": str(tmp_path / "token"), "project_id": 3},
    }


def test_defaults_as_documented(tmp_path: Path) -> None:
    s3 = handler_config(**S3).settings
    assert (s3.files, s3.endpoint_url, s3.multipart_threshold, s3.max_concurrency) == (
        ["output.jsonl", "errors.jsonl", "batch.json"],
        None,
        64 << 20,
        4,
    )
    pg = handler_config(**PG).settings
    assert (pg.dsn_file, pg.create_table) == (None, False)
    ls = handler_config(**_ls(tmp_path)).settings
    assert (ls.url, ls.data, ls.files) == ("http://ls:8080", {"prompt": "prompt", "answer": "answer"}, ["output.jsonl", "errors.jsonl"])


@pytest.mark.parametrize(
    "item",
    [
        {**S3, "settings": {"bucket": "bkt", "prefix": "/abs/"}},
        {**S3, "settings": {"bucket": "bkt", "endpoint_url": "ftp://x"}},
        {**S3, "settings": {"bucket": "bkt", "multipart_chunksize": 1024}},
        {**S3, "settings": {"bucket": "bkt", "secret": "inline"}},
        {**PG, "settings": {"table": "results; DROP TABLE x"}},
        {**PG, "settings": {"dsn": "host=db password=inline"}},
        {"name": "r", "type": "label_studio", "settings": {"url": "http://ls", "project_id": 0}},
        {"name": "r", "type": "label_studio", "settings": {"url": "http://ls", "project_id": 1, "data": {"text": "nonsense"}}},
    ],
)
def test_bad_settings_are_refused(item: dict) -> None:
    with pytest.raises(ValidationError):
        handler_config(**item)


def test_unreadable_secrets_are_refused_naming_only_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"handler db \(postgres\): cannot read dsn_file .*missing.dsn"):
        build_handler(handler_config(**{**PG, "settings": {"dsn_file": str(tmp_path / "missing.dsn")}}))
    (tmp_path / "aws").write_text("[other]\naws_access_key_id = AKIA\n")
    with pytest.raises(ConfigError, match=r"has no \[default\] section"):
        build_handler(handler_config(**{**S3, "settings": {"bucket": "bkt", "credentials_file": str(tmp_path / "aws")}}))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    item = _ls(tmp_path)
    del item["settings"]["token_file"]
    with pytest.raises(ConfigError, match="set LABEL_STUDIO_API_KEY"):
        build_handler(handler_config(**item))


@pytest.mark.parametrize(("module", "extra"), [("boto3", "s3"), ("psycopg", "postgres"), ("label_studio_sdk", "labelstudio")])
def test_a_missing_library_is_one_line_naming_the_extra(module: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = {"s3": S3, "postgres": PG, "labelstudio": _ls(tmp_path)}[extra]
    config = handler_config(**item)
    working = HandlerDispatcher([config], "n")  # installed: builds
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(ConfigError) as info:
        HandlerDispatcher([config], "n")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"handler {config.name} ({config.type}): needs the Python package {module}")
    assert message.endswith(f"pip install 'spoold[{extra}]'")
    with pytest.raises(ConfigError):  # on reload: refused, the running handlers stay
        working.reconfigure([config])
    assert list(working._handlers) == [config.name]


def test_record_helpers() -> None:
    chat = {"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "last"}]}]}}  # fmt: skip
    assert prompt_of(chat) == "last"
    assert prompt_of({"prompt": "bare completion"}) == "bare completion"
    assert prompt_of({"body": {"input": ["a", "b"]}}) == "a\nb"
    assert answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi" and answer_text({"choices": [{"text": "t"}]}) == "t"
    assert answer_text(None) is None
    assert usage_tokens({"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}) == (1, 2, 3)
    assert usage_tokens({}) == (None, None, None)
    assert finished_at({"status": "cancelled", "cancelled_at": 5}) == 5.0 and finished_at({}) is None


def test_requests_by_custom_id_names_unnamed_lines_as_spoold_does(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text('{"custom_id": "x", "prompt": "p1"}\n\nnot json\n{"prompt": "p4"}\n')
    assert requests_by_custom_id(path) == {"x": {"custom_id": "x", "prompt": "p1"}, "line-4": {"prompt": "p4"}}
    assert requests_by_custom_id(tmp_path / "missing") == {}
