"""Parsing one input line (SPEC section 4): pure, no I/O."""

from __future__ import annotations

import json

import pytest

from spoold.engine.base import EngineRequest
from spoold.job.lines import LineError, parse_line


def parse(obj: object, line: int = 1, model: str = "m", **kw: bool) -> EngineRequest | LineError | None:
    raw = obj if isinstance(obj, bytes) else (obj if isinstance(obj, str) else json.dumps(obj)).encode()
    return parse_line(raw, line, model, **kw)


def test_full_chat_line() -> None:
    r = parse(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    assert isinstance(r, EngineRequest) and r.kind == "chat" and r.custom_id == "a"


def test_full_completion_line() -> None:
    r = parse({"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "once"}})
    assert isinstance(r, EngineRequest) and r.kind == "completion"


@pytest.mark.parametrize(
    ("obj", "kind"),
    [({"messages": [{"role": "user", "content": "x"}]}, "chat"), ({"prompt": "x"}, "completion"), ({"prompt": [1, 2, 3]}, "completion")],
)
def test_shorthand_defaults_custom_id_to_line_number(obj: dict, kind: str) -> None:
    r = parse(obj, line=7)
    assert isinstance(r, EngineRequest) and r.kind == kind and r.custom_id == "line-7"


def test_blank_lines_are_skipped() -> None:
    assert parse(b"   \n") is None
    assert parse(b"\n") is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}", "invalid_encoding"),
        (b"{nope", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (json.dumps({"custom_id": "a", "url": "/v1/audio/speech", "body": {}}).encode(), "invalid_url"),
        (json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}}).encode(), "invalid_request"),
        (json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}}).encode(), "invalid_request"),
        (json.dumps({"custom_id": "a", "url": "/v1/completions", "body": "x"}).encode(), "invalid_request"),
        (json.dumps({"custom_id": 5, "url": "/v1/completions", "body": {"prompt": "x"}}).encode(), "invalid_request"),
        (json.dumps({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x"}, "extra": 1}).encode(), "invalid_request"),
        (json.dumps({"url": "/v1/completions", "body": {"prompt": "x", "model": "other"}}).encode(), "model_mismatch"),
        (json.dumps({"messages": []}).encode(), "invalid_request"),
        (json.dumps({"messages": ["hi"]}).encode(), "invalid_request"),
        (json.dumps({"prompt": 5}).encode(), "invalid_request"),
        (json.dumps({"neither": "x"}).encode(), "invalid_request"),
    ],
)
def test_bad_lines_become_line_errors(raw: bytes, code: str) -> None:
    r = parse_line(raw, 3, "m")
    assert isinstance(r, LineError) and r.code == code and r.line == 3 and r.message


def test_cut_off_last_line_says_the_upload_may_be_incomplete() -> None:
    r = parse_line(b'{"prompt": "half', 9, "m", unterminated=True)
    assert isinstance(r, LineError) and r.code == "truncated_line" and "upload" in r.message


def test_error_keeps_custom_id_when_known() -> None:
    r = parse({"custom_id": "keep", "url": "/v1/nope", "body": {}})
    assert isinstance(r, LineError) and r.custom_id == "keep"


def test_record_lines_survive_splitlines() -> None:
    from spoold.job.records import success_record

    text = "a\u2028b\u2029c\x85d\x1ee\nf"
    line = success_record("x", {"choices": [{"text": text}]}).to_line().decode()
    assert line.endswith("\n") and len(line.splitlines()) == 1
    assert json.loads(line)["response"]["body"]["choices"][0]["text"] == text


def test_byte_order_mark_and_crlf_are_tolerated() -> None:
    r = parse_line('\ufeff{"prompt": "x"}\r\n'.encode(), 1, "m")
    assert isinstance(r, EngineRequest) and r.body == {"prompt": "x"}
