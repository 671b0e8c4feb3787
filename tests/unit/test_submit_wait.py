"""`spoold submit --wait`: a progress bar (tqdm) on a terminal, plain lines otherwise, exit status from the outcome."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from spoold.control.wait import Sighting, locate, outcome, progress_line
from spoold.spool.layout import Spool

from spoold_helpers import SpooldProcess, chat_line, child_env, write_jsonl


def _batch(status: str, done: int, failed: int, total: int, **extra: object) -> dict:
    return {"status": status, "request_counts": {"total": total, "completed": done, "failed": failed},
            "spoold": {"durations": {"running_seconds": 12.5}}, **extra}  # fmt: skip


def test_outcome_of_a_completed_job(tmp_path: Path) -> None:
    code, lines = outcome(Sighting("done", tmp_path / "done" / "j", _batch("completed", 9, 1, 10)))
    assert code == 0
    assert lines == [
        "j: completed: 9 of 10 requests succeeded, 1 failed in 12.5 s",
        f"results: {tmp_path}/done/j/output.jsonl",
        f"errors:  {tmp_path}/done/j/errors.jsonl",
        f"status:  {tmp_path}/done/j/batch.json",
    ]


def test_failed_and_cancelled_jobs_exit_non_zero(tmp_path: Path) -> None:
    failed = _batch(
        "failed", 0, 3, 3, errors={"object": "list", "data": [{"code": "job_failed", "message": "no valid request among 3 lines"}]}
    )
    code, lines = outcome(Sighting("failed", tmp_path / "failed" / "j", failed))
    assert code == 1 and lines[1] == "reason: no valid request among 3 lines"
    assert outcome(Sighting("done", tmp_path / "done" / "j", _batch("cancelled", 2, 0, 9)))[0] == 1


def test_progress_line() -> None:
    running = Sighting("processing", Path("/s/processing/j"), _batch("in_progress", 30, 10, 200))
    assert progress_line("j", running, 20.0) == "j: in_progress, 40/200 requests (20%), 20.0 req/s, ETA 8.0 s"
    assert progress_line("j", Sighting("inbox"), None) == "j: queued"


def test_the_job_is_followed_by_its_input_file_through_renames(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    (tmp_path / "done" / "j").mkdir()  # an older job of the same name: this one becomes j.2
    (tmp_path / "done" / "j" / "input.jsonl").write_text("old\n")
    src = spool.inbox / "j.jsonl"
    src.write_text("new\n")
    st = src.stat()
    ident = (st.st_dev, st.st_ino)
    assert locate(spool, "j", ident).state == "inbox"
    (tmp_path / "processing" / "j.2").mkdir()
    os.rename(src, tmp_path / "processing" / "j.2" / "input.jsonl")
    seen = locate(spool, "j", ident)
    assert (seen.state, seen.status, seen.finished) == ("processing", "claimed", False)
    (tmp_path / "processing" / "j.2" / "batch.json").write_text('{"status": "completed"}')
    os.rename(tmp_path / "processing" / "j.2", tmp_path / "done" / "j.2")
    seen = locate(spool, "j", ident)
    assert seen.finished and seen.path == tmp_path / "done" / "j.2"
    assert locate(spool, "j", (ident[0], ident[1] + 1)).state == "unknown"


@pytest.mark.slow
def test_wait_prints_plain_progress_and_where_results_are(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, chunk_size=5) as d:
        d.start(env={"SPOOLD_ECHO_DELAY": "0.1"})
        src = tmp_path / "greet.jsonl"
        write_jsonl(src, [chat_line(f"g{i}", f"hello {i}") for i in range(30)])
        (d.spool / "done" / "greet").mkdir()  # a finished job of the same name: ours becomes greet.2
        result = d.cli("submit", str(src), "--wait")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"submitted greet -> {d.inbox}/greet.jsonl"
        assert any(line.startswith("greet: queued") for line in lines)
        assert "greet.2: completed: 30 of 30 requests succeeded, 0 failed in " in result.stdout
        assert lines[-3:] == [f"results: {d.spool}/done/greet.2/output.jsonl", f"errors:  {d.spool}/done/greet.2/errors.jsonl",
                              f"status:  {d.spool}/done/greet.2/batch.json"]  # fmt: skip
        assert "\r" not in result.stdout  # no bar redraws in a pipe

        bad = tmp_path / "bad.jsonl"
        write_jsonl(bad, ["not json", "{}"])
        failed = d.cli("submit", str(bad), "--wait")
        assert failed.returncode == 1
        assert "bad: failed: 0 of 2 requests succeeded, 2 failed" in failed.stdout
        assert "reason: no valid request among 2 lines" in failed.stdout
        assert f"results: {d.spool}/failed/bad/output.jsonl" in failed.stdout
        assert d.stop() == 0


@pytest.mark.slow
def test_wait_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, chunk_size=5) as d:
        d.start(env={"SPOOLD_ECHO_DELAY": "0.1"})
        src = tmp_path / "tty.jsonl"
        write_jsonl(src, [chat_line(f"t{i}", "hi") for i in range(40)])
        primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a 100x30 terminal
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoold", "submit", str(src), "--wait", "--config", str(d.config_path)],
            stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL, env=child_env(), cwd=tmp_path,
        )  # fmt: skip
        os.close(secondary)
        output = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(primary)
        assert proc.wait(timeout=30) == 0
        text = output.decode(errors="replace")
        assert "\r" in text and "40/40" in text and "req/s" in text  # tqdm redraws in place
        assert "tty: completed: 40 of 40 requests succeeded" in text
        assert f"results: {d.spool}/done/tty/output.jsonl" in text
        assert d.stop() == 0
