"""The validating pass cut into parts (issue 25): the parts merged give exactly the whole file's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spoold.job.validate import MAX_LISTED_ERRORS, merge_parts, part_bounds, validate_file, validate_part

MODEL = "tiny-random"
LIMIT = 2048


def chat(cid: str, text: str = "hi") -> str:
    return json.dumps(
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": text}]},
        }
    )


def split_pass(path: Path, parts: int, work: Path) -> tuple[list[tuple[int, int]], object]:
    bounds = part_bounds(path, parts)
    files = [work / f"part-{k}" for k in range(len(bounds))]
    found = [validate_part((path,), None, MODEL, a, b, f, LIMIT) for (a, b), f in zip(bounds, files, strict=True)]
    return bounds, merge_parts((path,), None, MODEL, found, files, LIMIT)


def tricky_lines() -> list[str]:
    lines = [chat(f"a{i}") for i in range(300)]
    lines[10] = "not json"
    lines[40] = ""  # blank lines are numbered, never records
    lines[41] = "   "
    lines[150] = chat("x" * 10, "y" * (LIMIT + 10))  # over the line limit
    lines[160] = chat("a3")  # a duplicate of a line in the first part
    lines[200] = '{"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}}'
    lines[250] = chat("a160")
    lines[251] = chat("a160")  # both in the last part: the second is the duplicate
    lines[299] = ""
    return lines


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("ending", ["\n", ""])
def test_parts_merge_to_the_whole_files_summary(tmp_path: Path, parts: int, ending: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(tricky_lines()) + ending)
    bounds, merged = split_pass(path, parts, tmp_path)
    whole = validate_file(path, MODEL, max_line_bytes=LIMIT)
    assert merged == whole
    assert whole.duplicates == [161, 252] and whole.lines == 297 and whole.invalid == 5
    data = path.read_bytes()
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data)
    for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False):
        assert end == start and data[start - 1 : start] == b"\n"  # every part starts a line
    assert 1 <= len(bounds) <= parts and (parts == 1 or len(bounds) > 1)


def test_a_line_longer_than_a_part_is_read_once_by_the_part_it_starts_in(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(chat("short") + "\n" + chat("long", "z" * 50_000) + "\n" + chat("last") + "\n")
    bounds, merged = split_pass(path, 8, tmp_path)
    assert merged == validate_file(path, MODEL, max_line_bytes=LIMIT)
    assert len(bounds) <= 3 and merged.lines == 3 and merged.invalid == 1  # type: ignore[attr-defined]


def test_the_listed_errors_are_the_first_ones_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(["broken"] * 60 + [chat("ok")] + ["broken"] * 60) + "\n")
    _, merged = split_pass(path, 4, tmp_path)
    whole = validate_file(path, MODEL, max_line_bytes=LIMIT)
    assert merged == whole and [e.line for e in whole.errors] == list(range(1, MAX_LISTED_ERRORS + 1))


def test_an_empty_file_is_one_empty_part(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"")
    bounds, merged = split_pass(path, 4, tmp_path)
    assert bounds == [(0, 0)] and merged == validate_file(path, MODEL)
