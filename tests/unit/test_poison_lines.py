"""Hostile lines (issue 16): whatever a line holds, it is that line's error, with a clear code and
message; the record writer takes any content; an over-long line is skipped without being read whole."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from spoold.engine.base import EngineRequest
from spoold.job import lines as lines_module
from spoold.job.lines import MAX_NESTING, SHOWN_CHARS, LineError, parse_line, parse_raw_line
from spoold.job.reader import read_lines
from spoold.job.records import error_record, success_record
from spoold.job.validate import validate_file


def nested(depth: int) -> bytes:
    """A chat line whose body carries a list nested so that the whole line is `depth` levels deep."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return ('{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + inner + "}").encode()


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"[" * 100_000, "invalid_json", "nested too deeply"),
        (b'{"prompt": "x", "a": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", "invalid_json", "nested too deeply"),
        (nested(MAX_NESTING + 1), "invalid_json", "nested too deeply"),
        (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "invalid_json", "digits"),
        (b'{"prompt": "x", "temperature": 1e999}', "invalid_json", "too large"),
        (b'{"prompt": "x", "temperature": NaN}', "invalid_json", "NaN is not a JSON number"),
        (b'{"prompt": "x", "temperature": -Infinity}', "invalid_json", "-Infinity"),
        (b'{"prompt": "\\ud800 alone"}', "invalid_encoding", "\\ud800"),
        (b'{"prompt": "x", "\\udfff": 1}', "invalid_encoding", "\\udfff"),
        (b'{"custom_id": "\\udbff", "prompt": "x"}', "invalid_encoding", "surrogate"),
        (b'{"prompt": "a\x00b"}', "invalid_json", "NUL byte"),
        ('{"prompt": "x"}'.encode("utf-16"), "invalid_encoding", "not UTF-8"),
        (b"\xed\xa0\x80", "invalid_encoding", "not UTF-8"),  # a surrogate encoded as UTF-8 bytes
        (b'{"url": ["/v1/completions"], "body": {"prompt": "x"}}', "invalid_url", "got a list"),  # found by the fuzzer
    ],
)
def test_hostile_lines_are_that_lines_error(raw: bytes, code: str, words: str) -> None:
    result = parse_line(raw, 3, "m")
    assert isinstance(result, LineError), result
    assert (result.line, result.code) == (3, code) and words in result.message, result.message


def test_nesting_up_to_the_limit_and_valid_surrogate_pairs_are_fine() -> None:
    assert isinstance(parse_line(nested(MAX_NESTING), 1, "m"), EngineRequest)
    emoji = parse_line(b'{"prompt": "\\ud83d\\ude00 and \\\\ud800 as text", "temperature": 0.5}', 1, "m")
    assert isinstance(emoji, EngineRequest) and emoji.body["prompt"] == "\U0001f600 and \\ud800 as text"
    escaped_nul = parse_line(b'{"prompt": "a\\u0000b"}', 1, "m")  # valid JSON, valid Unicode: the model's business
    assert isinstance(escaped_nul, EngineRequest)


def test_any_exception_while_judging_a_line_is_that_lines_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(obj: object, line: int, job_model: str, serves: object = None) -> None:
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(lines_module, "_request_from_object", broken)
    result = parse_line(b'{"prompt": "x"}', 9, "m")
    assert result == LineError(9, "invalid_request", "line could not be read: RuntimeError: something nobody foresaw")


def test_quoted_values_in_messages_are_cut() -> None:
    result = parse_line(json.dumps({"method": "G" * 100_000, "url": "/v1/completions", "body": {}}).encode(), 1, "m")
    assert isinstance(result, LineError) and len(result.message) < 40 + SHOWN_CHARS and result.message.endswith("...")
    result = parse_line(json.dumps({"prompt": "x", "model": "M" * 100_000}).encode(), 1, "m")
    assert isinstance(result, LineError) and result.code == "model_mismatch" and len(result.message) < 100 + SHOWN_CHARS


def test_record_writer_takes_odd_content() -> None:
    deep: list = []
    for _ in range(400):
        deep = [deep]
    record = success_record("id-\ud800", {"text": "a\udcffb\u2028", "nan": float("nan"), "deep": deep})
    line = record.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = json.loads(line)
    assert parsed["custom_id"] == "id-\ufffd" and parsed["response"]["body"]["text"] == "a\ufffdb\u2028"
    assert parsed["response"]["body"]["nan"] is None and b"nested too deeply" in line
    err = json.loads(error_record("\udfff", 4, "invalid_request", "bad \ud800").to_line())
    assert err["error"] == {"code": "invalid_request", "message": "bad \ufffd", "line": 4}
    normal = success_record("ok", {"a": 1}).to_line()  # the usual path is unchanged: compact pydantic JSON
    assert normal.startswith(b'{"id":"batch_req_') and b'"body":{"a":1}' in normal


# ---- max_line_bytes: the reader ----------------------------------------------------------------


def test_over_long_lines_are_skipped_with_exact_offsets(tmp_path: Path) -> None:
    limit = 1000
    contents = [b"a" * 999, b"b" * 1000, b"c" * 1001, b"d" * 50_000, b"", b"e" * 10, b"f" * 5000]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(contents))  # the last line is unterminated and too long
    got = list(read_lines(path, max_line_bytes=limit))
    assert [r.number for r in got] == list(range(1, 8))
    offset = 0
    for raw, content in zip(got, contents, strict=True):
        size = len(content) + (1 if raw.number < 7 else 0)
        assert (raw.offset, raw.end) == (offset, offset + size)
        assert raw.too_long == (limit if len(content) > limit else None)
        assert raw.data == (b"" if raw.too_long else content + (b"\n" if raw.number < 7 else b""))
        offset += size
    assert offset == path.stat().st_size
    resumed = list(read_lines(path, got[3].offset, 4, limit))  # a checkpoint's offset resumes exactly
    assert [(r.number, r.offset, r.end, r.too_long) for r in resumed] == [(r.number, r.offset, r.end, r.too_long) for r in got[3:]]


def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"prompt": "' + b"x" * (30 << 20) + b'"}\n{"prompt": "ok"}\n')
    tracemalloc.start()
    try:
        got = [(r.number, r.too_long, len(r.data)) for r in read_lines(path, max_line_bytes=1 << 20)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [(1, 1 << 20, 0), (2, None, 17)]
    assert peak < 4 << 20, f"reading a 30 MB line with a 1 MB limit peaked at {peak / 1e6:.1f} MB"


def test_too_long_line_becomes_line_too_long_in_the_validating_pass(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "' + "y" * 5000 + '"}\n{"prompt": "fine"}\n')
    summary = validate_file(path, "m", max_line_bytes=2048)
    assert (summary.lines, summary.valid, summary.invalid) == (3, 2, 1)
    err = summary.errors[0]
    assert (err.line, err.code) == (2, "line_too_long") and "5,014 bytes" in err.message and "2,048" in err.message
    raw = next(r for r in read_lines(path, max_line_bytes=2048) if r.number == 2)
    assert parse_raw_line(raw, "m") == LineError(2, err.code, err.message)
