"""Validating the next job ahead of time (a separate process), used only for the very same file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spoold.job.prevalidate import Prevalidator
from spoold.job.validate import validate_file

from spoold_helpers import SpooldProcess, chat_line, drop_job, read_records, wait_for, write_jsonl

pytestmark = pytest.mark.slow


def _big(path: Path, n: int = 6000) -> None:
    write_jsonl(path, [chat_line(f"p{i}", "x" * 200) for i in range(n)] + ["not json", chat_line("p0", "dup")])


def test_summary_is_used_only_for_the_same_bytes(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    _big(big)
    pre = Prevalidator()
    try:
        pre.offer(big, "tiny-random")
        wait_for(lambda: pre.finished(big, "tiny-random"), 60, what="the background pass")
        moved = tmp_path / "claimed.jsonl"
        os.rename(big, moved)  # a claim is a rename: same inode, size and mtime
        summary = pre.take(moved, "tiny-random", lambda: True)
        assert summary == validate_file(moved, "tiny-random")
        assert summary is not None and summary.lines == 6002 and summary.invalid == 2
        assert pre.take(moved, "tiny-random", lambda: True) is None  # handed out once

        pre.offer(moved, "tiny-random")
        with open(moved, "a") as fh:
            fh.write('{"prompt": "appended later"}\n')
        assert pre.take(moved, "tiny-random", lambda: True) is None  # changed bytes: never reused
        pre.offer(moved, "other-model")
        assert pre.take(moved, "tiny-random", lambda: True) is None  # another model's verdict
        small = tmp_path / "small.jsonl"
        write_jsonl(small, [chat_line("a", "hi")])
        pre.offer(small, "tiny-random")
        assert pre.take(small, "tiny-random", lambda: True) is None  # not worth a process
    finally:
        pre.close()


def test_next_job_is_validated_while_the_current_one_runs(tmp_path: Path) -> None:
    """With every slot taken, the job that will get the next one is validated in another process."""
    with SpooldProcess(tmp_path, engine={"window": 20, "max_active_jobs": 1}) as d:
        drop_job(d.inbox, "first", [chat_line(f"f{i}", "hi") for i in range(1000)], {"priority": 1})
        _big(d.inbox / ".second.tmp")
        os.rename(d.inbox / ".second.tmp", d.inbox / "second.jsonl")
        (d.inbox / "second.yaml").write_text("chunk_size: 1000\n")
        d.start({"SPOOLD_ECHO_DELAY": "0.01"})
        second = d.wait_finished("second", timeout=120)
        assert "job second: validated: 6002 requests, 2 invalid (validated ahead of time)" in d.log()
        assert "job first: validated: 1000 requests, 0 invalid\n" in d.log()  # too small to validate ahead
        records = read_records(second)
        outputs = sorted(r["custom_id"] for r in records if r["error"] is None)
        errors = sorted((r["error"]["line"], r["error"]["code"]) for r in records if r["error"] is not None)
        assert outputs == sorted(f"p{i}" for i in range(6000))
        assert errors == [(6001, "invalid_json"), (6002, "duplicate_custom_id")]
        assert d.batch(second)["request_counts"] == {"total": 6002, "completed": 6000, "failed": 2}


def test_a_large_upload_is_validated_during_its_settle_time(tmp_path: Path) -> None:
    """Issue 8: the pass starts when the sidecar (the commit marker) lands, not at the claim,
    so even the only job in the spool finds its pass done when it is claimed."""
    with SpooldProcess(tmp_path, watch={"settle_seconds": 3.0}) as d:
        d.start()
        _big(d.inbox / ".only.tmp")
        os.rename(d.inbox / ".only.tmp", d.inbox / "only.jsonl")
        (d.inbox / "only.yaml").write_text("chunk_size: 1000\n")
        only = d.wait_finished("only", timeout=120)
        assert "job only: validated: 6002 requests, 2 invalid (validated ahead of time)" in d.log()
        assert d.batch(only)["request_counts"] == {"total": 6002, "completed": 6000, "failed": 2}


def test_a_pass_whose_worker_is_still_starting_is_not_waited_for(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    _big(big)
    pre = Prevalidator()
    try:
        pre.offer(big, "tiny-random")  # spawns the worker process: about half a second
        assert pre.take(big, "tiny-random", lambda: pytest.fail("waited for a worker still starting")) is None
        pre.warm()
        wait_for(lambda: pre.finished(big, "tiny-random") or pre._worker_up.done(), 60, what="the worker")
        pre.offer(big, "tiny-random")
        summary = pre.take(big, "tiny-random", lambda: True)  # worker up: a pass under way is waited for
        assert summary is not None and summary.lines == 6002
    finally:
        pre.close()


def test_a_large_input_waits_for_workers_that_are_still_starting(tmp_path: Path) -> None:
    """From wait_bytes on, half a second of spawning is sooner than a pass on one thread: the claim waits."""
    big = tmp_path / "big.jsonl"
    _big(big)
    pre = Prevalidator(workers=2, split_bytes=1 << 20, wait_bytes=1 << 20)
    try:
        pre.offer(big, "tiny-random")  # spawns the worker processes
        assert not pre._worker_running()
        waits = []
        summary = pre.take(big, "tiny-random", lambda: waits.append(1) or True)
        assert waits  # it waited (beating the watchdog) instead of handing the pass back
        assert summary is not None and summary == validate_file(big, "tiny-random") and summary.lines == 6002
    finally:
        pre.close()


def test_a_small_input_is_validated_in_the_worker_once_it_runs(tmp_path: Path) -> None:
    """Small inputs are not offered ahead of time; once the worker process runs (it is started
    beside a vLLM model load), a job-start thread has their pass run there, without the GIL."""
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(chat_line(f"s{i}", "hi")) + "\n" for i in range(5)) + "not json\n")
    inline = validate_file(small, "tiny-random")
    pre = Prevalidator()
    try:
        assert pre.validate_aside(small, "tiny-random", lambda: pytest.fail("no worker: nothing to wait for")) is None
        pre.warm()
        wait_for(pre._worker_running, 60, what="the worker")
        aside = pre.validate_aside(small, "tiny-random", lambda: True)
        assert aside is not None and aside == inline and (aside.lines, aside.invalid) == (6, 1)
        assert pre.validate_aside(tmp_path / "gone.jsonl", "tiny-random", lambda: True) is None  # failed there: inline
    finally:
        pre.close()
    assert pre.validate_aside(small, "tiny-random", lambda: True) is None  # closed (a stop or reload)


def test_a_large_input_is_validated_in_parts_side_by_side(tmp_path: Path) -> None:
    """Issue 25: an input of split_bytes or more is cut at line starts, one part per worker process,
    and the merged summary is the whole file's (duplicates across parts, line numbers, listed errors)."""
    big = tmp_path / "big.jsonl"
    _big(big)  # the duplicate of p0 is in the last part, p0 in the first
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pre = Prevalidator(workers=3, split_bytes=1 << 20, scratch=scratch)
    try:
        pre.warm()
        wait_for(pre._worker_running, 60, what="the workers")
        pre.offer(big, "tiny-random")
        summary = pre.take(big, "tiny-random", lambda: True)
        assert summary is not None and summary == validate_file(big, "tiny-random")
        assert (summary.lines, summary.invalid, summary.duplicates) == (6002, 2, [6002])
        workers = {p.pid for p in pre._executor._processes.values()} if pre._executor else set()  # type: ignore[attr-defined]
        assert len(workers) == 3
        assert not list(scratch.iterdir())  # the parts' hash files are gone before the summary is handed out

        gone = tmp_path / "gone.jsonl"  # e.g. another daemon claimed it first: no summary, the job validates inline
        assert pre._executor is not None
        assert pre._result_of(pre._submit_split(pre._executor, (gone,), (0, 0), "tiny-random", None, 3), gone, lambda: True) is None
    finally:
        pre.close()


@pytest.mark.parametrize("split_bytes", [1 << 40, 1 << 20], ids=["whole", "in parts"])
def test_a_pass_finds_the_input_the_claim_moved_before_the_worker_opened_it(tmp_path: Path, split_bytes: int) -> None:
    """The worker is handed the inbox name and the claim's; the claim usually wins the race to the file."""
    big = tmp_path / "big.jsonl"
    _big(big)
    claimed_as = tmp_path / "processing" / "big" / "input.jsonl"
    claimed_as.parent.mkdir(parents=True)
    pre = Prevalidator(workers=2, split_bytes=split_bytes)
    try:
        pre.offer(big, "tiny-random", None, claimed_as)  # the worker processes are only starting
        os.rename(big, claimed_as)
        wait_for(lambda: pre.finished(claimed_as, "tiny-random"), 60, what="the background pass")
        summary = pre.take(claimed_as, "tiny-random", lambda: True)
        assert summary is not None and summary == validate_file(claimed_as, "tiny-random")

        other = tmp_path / "other.jsonl"  # a file at neither name: the one at claimed_as is never read in its place
        _big(other)
        identity = (os.stat(other).st_dev, os.stat(other).st_ino)
        assert pre._executor is not None
        names = (tmp_path / "gone.jsonl", claimed_as)
        whole = pre._submit(pre._executor, names, identity, "tiny-random", None)
        parts = pre._submit_split(pre._executor, names, identity, "tiny-random", None, 2)
        assert isinstance(whole.exception(timeout=60), FileNotFoundError)
        assert isinstance(parts.exception(timeout=60), FileNotFoundError)
    finally:
        pre.close()
