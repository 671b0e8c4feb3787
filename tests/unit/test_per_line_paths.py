"""The per-line short paths (issue 25) answer exactly what the long ones do.

- the validating pass reads a plain line's raw bytes with orjson (`lines._plain_object`): same
  verdict as the full decode-strip-check path, for hostile lines too;
- feeding a job whose pass found no invalid line (`known_good_request`): the same request, or it
  raises and the line is judged in full;
- records are encoded by orjson (`encode_line`): the bytes `json.dumps` (compact, not ASCII-escaped)
  and pydantic wrote for the same record
  (json.dumps spells some floats otherwise: 1e-07 for 1e-7).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic_core import to_json

from spoold.engine import responses
from spoold.engine.base import EngineRequest
from spoold.job import lines
from spoold.job.lines import known_good_request, parse_raw_line
from spoold.job.reader import read_lines
from spoold.job.records import encode_line, error_record, success_record

from fuzz_lines import fuzz_lines

LIMIT = 4096
MODEL = "tiny-random"

PLAIN = [
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0.8}}',
    b'{"prompt": "x", "seed": 12345678901234567890123}',
    b'{"prompt": "x", "n": 1e400}',
    b'{"prompt": "x", "a": 1, "a": 2}',
    b'\xef\xbb\xbf{"prompt": "bom"}\r',
    b'{"prompt": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"}',
    b'{"prompt": "lone \\ud800"}',
    b'{"input": ["a", "b"], "custom_id": "e"}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "t"}]}]}',
    b'{"custom_id": "u", "url": "/v1/embeddings", "body": {"input": "x"}}',
    b'{"custom_id": "u", "url": "/v1/nope", "body": {"input": "x"}}',
    b'{"prompt": "x"}\x1f',
    b'  {"prompt": "spaces"}  ',
    b"[1, 2]",
    b'"url"',
    b"\n",
    b'{"prompt": "x", "model": "other"}',
    b'{"prompt": ' + b"[" * 130 + b"]" * 130 + b"}",
]


def _lines(tmp_path: Path) -> list:
    rng = random.Random(25)
    data = PLAIN + fuzz_lines(rng, 3000)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(line.rstrip(b"\n") for line in data) + b"\n")
    return list(read_lines(path, max_line_bytes=LIMIT))


def test_plain_lines_get_the_full_paths_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raws = _lines(tmp_path)
    short = [parse_raw_line(raw, MODEL) for raw in raws]
    monkeypatch.setattr(lines, "_plain_object", lambda raw: None)  # the full path alone
    full = [parse_raw_line(raw, MODEL) for raw in raws]
    for raw, a, b in zip(raws, short, full, strict=True):
        assert a == b, f"line {raw.number}: {raw.data[:120]!r}"
    assert sum(isinstance(r, EngineRequest) for r in short) > 100


def test_known_good_request_is_the_request_or_raises(tmp_path: Path) -> None:
    taken = 0
    for raw in _lines(tmp_path):
        judged = parse_raw_line(raw, MODEL, serves={"chat", "completion"})
        if judged is not None and not isinstance(judged, EngineRequest):
            continue  # a job with such a line never takes the short path
        try:
            quick = known_good_request(raw, {"chat", "completion"})
        except Exception:  # noqa: BLE001 - the caller judges such a line in full
            continue
        assert quick == judged, f"line {raw.number}: {raw.data[:120]!r}"
        taken += quick is not None
    assert taken > 100


def _records() -> list[dict]:
    body = responses.chat_completion("m", [{"text": 'caf\u00e9 \U0001f600 "q" \\ \x01 \t', "finish_reason": "stop"}], 3, 4)
    odd = {"f": [0.1, 1e-7, 1e16, -0.0, 1.5e300, 5e-324], "i": [0, -1, 2**63 - 1, 2**64 - 1], "b": [True, False, None], "e": {}, "l": []}
    return [
        success_record("c1", body).plain(),
        success_record("c2", odd).plain(),
        error_record(None, 3, "invalid_json", "bad \u00e9").plain(),
    ]


def test_encode_line_writes_what_json_dumps_and_pydantic_write() -> None:
    for record in _records():
        line = encode_line(record)
        assert line == to_json(record) + b"\n"  # what pydantic wrote before, byte for byte
        assert json.loads(line) == record
        if "f" not in (record["response"] or {}).get("body", {}):  # json.dumps writes 1e-07 and 1e+16 where both write 1e-7, 1e16
            assert line == (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        assert list(json.loads(line)) == ["id", "custom_id", "response", "error"]


def test_encode_line_falls_back_for_what_orjson_refuses() -> None:
    record = {"id": "x", "big": 2**70, "keys": {1: "a"}, "lone": "\ud800"}
    assert json.loads(encode_line(record)) == {"id": "x", "big": 2**70, "keys": {"1": "a"}, "lone": "\ufffd"}


def test_record_ids_are_32_hex_digits_and_differ() -> None:
    ids = {json.loads(success_record("c", {}).to_line())["id"] for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == len("batch_req_") + 32 and int(i[10:], 16) >= 0 for i in ids)
