"""Fuzzing (issue 16): seeded hostile lines through the validating pass and through the real daemon
(echo backend). No exception escapes a line, every job ends in done/ or failed/ with exactly one
record per non-blank line, and no traceback reaches the log.

CI runs one fixed seed in well under a minute; `make fuzz` runs many more lines and jobs with a
fresh seed (SPOOLD_FUZZ_SEED, SPOOLD_FUZZ_SCALE). A failure names the seed that reproduces it.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import yaml

from spoold.engine.base import EngineRequest
from spoold.job.lines import LineError, parse_raw_line
from spoold.job.reader import read_lines
from spoold.job.records import error_record, success_record
from spoold.job.validate import validate_file

from fuzz_lines import fuzz_lines, is_blank
from spoold_helpers import SpooldProcess, read_records

SEED = int(os.environ.get("SPOOLD_FUZZ_SEED", "16"))
SCALE = int(os.environ.get("SPOOLD_FUZZ_SCALE", "1"))
LIMIT = 4096
"""max_line_bytes in these tests, so that some generated lines are over it."""
MODEL = "tiny-random"


def test_validating_pass_and_record_writer_take_any_line(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    lines = fuzz_lines(rng, 3000 * SCALE)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    non_blank = sum(not is_blank(line, LIMIT) for line in lines)

    summary = validate_file(path, MODEL, max_line_bytes=LIMIT)
    assert (summary.lines, summary.valid + summary.invalid) == (non_blank, non_blank), f"seed {SEED}"

    codes: Counter[str] = Counter()
    offset = 0
    for raw, line in zip(read_lines(path, max_line_bytes=LIMIT), lines, strict=True):
        assert (raw.offset, raw.end) == (offset, offset + len(line) + 1), f"seed {SEED}, line {raw.number}"
        offset = raw.end
        parsed = parse_raw_line(raw, MODEL)
        assert (parsed is None) == is_blank(line, LIMIT), f"seed {SEED}, line {raw.number}: {line[:200]!r}"
        if parsed is None:
            continue
        if isinstance(parsed, LineError):
            codes[parsed.code] += 1
            record = error_record(parsed.custom_id, parsed.line, parsed.code, parsed.message)
        else:
            codes["valid"] += 1
            record = success_record(parsed.custom_id, {"echo": parsed.body})
        written = record.to_line()
        assert written.endswith(b"\n") and written.count(b"\n") == 1, f"seed {SEED}, line {raw.number}"
        json.loads(written)
    # The generator reaches every kind of problem, not just one: otherwise this test proves little.
    for code in ("valid", "invalid_json", "invalid_encoding", "invalid_request", "line_too_long"):
        assert codes[code] > 0, f"seed {SEED}: no {code} among {dict(codes)}"


def expected_records(path: Path) -> dict[int, str | None]:
    """Non-blank line -> the custom_id its success record carries, or None if it must be an error."""
    seen: set[str] = set()
    out: dict[int, str | None] = {}
    for raw in read_lines(path, max_line_bytes=LIMIT):
        parsed = parse_raw_line(raw, MODEL)
        if parsed is None:
            continue
        if isinstance(parsed, EngineRequest) and parsed.custom_id not in seen:
            seen.add(parsed.custom_id)
            out[raw.number] = parsed.custom_id
        else:
            out[raw.number] = None
    return out


def test_daemon_finishes_every_fuzzed_job_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    jobs: dict[str, list[bytes]] = {}
    with SpooldProcess(tmp_path, max_line_bytes=LIMIT, chunk_size=7) as d:
        d.start()
        for j in range(8 * SCALE):
            name = f"fuzz{j}"
            lines = jobs[name] = fuzz_lines(rng, rng.choice([1, 3, rng.randint(5, 90)]))
            ending = b"\n" if rng.random() < 0.8 else b""  # sometimes the last line is cut off
            tmp = d.inbox / f".{name}.tmp"
            tmp.write_bytes(b"\n".join(lines) + ending)
            os.rename(tmp, d.inbox / f"{name}.jsonl")
            sidecar = rng.choice([{"max_error_ratio": 1.0}, {}, {"max_error_ratio": 1.0, "sampling": {"max_tokens": 3}}])
            (d.inbox / f"{name}.yaml").write_text(yaml.safe_dump(sidecar))
        for name, lines in jobs.items():
            job = d.wait_finished(name, timeout=120)
            where = f"seed {SEED}, job {name} ({job.parent.name})"
            expected = expected_records(job / "input.jsonl")
            assert len(expected) == sum(not is_blank(line, LIMIT) for line in lines), where
            by_id = {cid: n for n, cid in expected.items() if cid is not None}
            got: Counter[int] = Counter()
            for record in read_records(job):
                if record["error"]:
                    got[record["error"]["line"]] += 1
                else:
                    assert record["custom_id"] in by_id, f"{where}: unexpected success {record['custom_id']!r}"
                    got[by_id[record["custom_id"]]] += 1
            missing = sorted(set(expected) - set(got))
            twice = sorted(n for n, k in got.items() if k > 1)
            extra = sorted(set(got) - set(expected))
            assert not missing and not twice and not extra, f"{where}: missing {missing} twice {twice} extra {extra}"
            batch = d.batch(job)
            if job.parent.name == "failed":  # only when no line is valid (or the file is empty)
                assert all(cid is None for cid in expected.values()), f"{where}: {batch['errors']}"
        assert d.stop() == 0
        log = d.log()
        assert "Traceback" not in log and "unexpected error" not in log, f"seed {SEED}:\n{log[-3000:]}"
