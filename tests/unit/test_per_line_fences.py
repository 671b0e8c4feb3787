"""Issue 25's second round of cuts: the lease fence by lookups, long digit runs without the regex, remembered body checks, records encoded per chunk."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from spoold.engine import body_rules
from spoold.job import lines
from spoold.job.records import encode_records, error_record, success_record
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir


def _job(tmp_path: Path) -> JobDir:
    job = JobDir(tmp_path / "job")
    job.state.mkdir(parents=True)
    return job


def test_the_fence_sees_a_takeover_of_our_generation(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ours = leases.acquire(job, "a", None)
    assert ours is not None
    leases.check(job, ours)  # nobody else: ours
    theirs = leases.acquire(job, "b", ours)  # creates gen 2, removes gen 1
    assert theirs is not None and theirs.gen == ours.gen + 1
    with pytest.raises(leases.LeaseLost):
        leases.check(job, ours)
    leases.check(job, theirs)


def test_the_fence_sees_a_takeover_of_a_takeover(tmp_path: Path) -> None:
    """Generations N+1 and N both gone, N+2 holds: the lookups find nothing, so the listing decides."""
    job = _job(tmp_path)
    ours = leases.acquire(job, "a", None)
    second = leases.acquire(job, "b", ours)
    third = leases.acquire(job, "c", second)
    assert ours is not None and third is not None and third.gen == ours.gen + 2
    assert not (job.state / f"lease.{ours.gen}.json").exists() and not (job.state / f"lease.{ours.gen + 1}.json").exists()
    with pytest.raises(leases.LeaseLost):
        leases.check(job, ours)
    with pytest.raises(leases.LeaseLost):
        leases.renew(job, ours)


def test_renew_lists_the_folder_even_when_our_file_was_written_back(tmp_path: Path) -> None:
    """An owner frozen between its check and its write puts lease.N back after two takeovers removed it:
    the lookups are fooled (N present, N+1 absent), the renewal's listing is not."""
    job = _job(tmp_path)
    ours = leases.acquire(job, "a", None)
    third = leases.acquire(job, "c", leases.acquire(job, "b", ours))
    assert ours is not None and third is not None
    (job.state / f"lease.{ours.gen}.json").write_text(json.dumps(ours.model_dump()))
    with pytest.raises(leases.LeaseLost):
        leases.renew(job, ours)


def test_long_digit_runs_are_found_as_the_regex_finds_them() -> None:
    pattern = re.compile(rb"\d{19}")
    rng = random.Random(25)
    alphabet = b"0123456789 ,.-e\xd9\xa0x"  # \xd9\xa0: an Arabic-Indic digit's UTF-8 bytes (not \d for bytes)
    for _ in range(3000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert lines._long_digits(raw) == (pattern.search(raw) is not None), raw
    assert lines._long_digits(b'{"seed": 12345678901234567890}')
    assert not lines._long_digits(b'{"seed": 123456789012345678}')


def test_a_line_with_a_huge_integer_still_takes_the_exact_path() -> None:
    raw = b'{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 123456789012345678901234}\n'
    parsed = lines.parse_line(raw, 1, "m")
    assert isinstance(parsed, lines.LineError)
    assert "123456789012345678901234" in parsed.message  # read as the integer it is, not orjson's float


def test_a_value_that_passed_once_is_still_judged_by_kind_and_type() -> None:
    body_rules.check_body({"logprobs": 5}, "completion")
    with pytest.raises(body_rules.RuleError):
        body_rules.check_body({"logprobs": 5}, "chat")  # the same value, the other kind
    body_rules.check_body({"max_tokens": 1}, "chat")
    with pytest.raises(body_rules.RuleError):
        body_rules.check_body({"max_tokens": True}, "chat")  # True == 1, but not an integer
    with pytest.raises(body_rules.RuleError):
        body_rules.check_body({"max_tokens": 0}, "chat")
    for _ in range(2):  # a failing value is never remembered as passed
        with pytest.raises(body_rules.RuleError):
            body_rules.check_body({"temperature": -1.0}, "chat")


def test_the_passed_values_stay_bounded() -> None:
    for n in range(1, body_rules._PASSED_MAX * 2):
        body_rules.check_body({"max_tokens": n}, "chat")
    assert len(body_rules._PASSED) <= body_rules._PASSED_MAX


def test_records_encoded_per_chunk_are_the_lines_each_record_writes() -> None:
    records = [
        success_record("a", {"object": "chat.completion", "choices": [{"message": {"content": "x\u2028y"}}]}),  # a line breaker
        error_record("b", 2, "invalid_json", "bad line"),
        success_record("c", {"text": "lone \ud800 surrogate", "n": 2**70}),  # orjson refuses: the fallback writer
        success_record("d", {"text": "plain"}),
        error_record(None, 5, "line_too_long", "skipped\u2029"),
    ]
    output, errors = encode_records(records)
    out_lines, err_lines = output.splitlines(keepends=True), errors.splitlines(keepends=True)
    assert len(out_lines) == 3 and len(err_lines) == 2  # U+2028/U+2029 escaped: bytes.splitlines does not split on them
    for line, record in zip(out_lines + err_lines, [records[i] for i in (0, 2, 3, 1, 4)], strict=True):
        expected, got = json.loads(record.to_line()), json.loads(line)
        assert got["custom_id"] == expected["custom_id"] == record.custom_id
        assert {k: v for k, v in got.items() if k != "id"} | {"response": None} == {k: v for k, v in expected.items() if k != "id"} | {
            "response": None
        }
        if got["response"] is not None:
            assert got["response"]["body"] == expected["response"]["body"]
    assert b"\xe2\x80\xa8" not in output and b"\\u2028" in output and b"\\u2029" in errors
    assert json.loads(out_lines[1])["response"]["body"] == {"text": "lone \ufffd surrogate", "n": 2**70}
