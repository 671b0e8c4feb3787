"""exec handler: environment, stdin, exit status, stderr tail, and a timeout that kills the process group."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from spoold.handlers.base import HandlerError, HandlerEvent
from spoold.handlers.exec_command import ExecHandler

from handler_helpers import event_for as shared_event_for
from handler_helpers import handler_config, make_dispatcher, make_job, read_batch  # noqa: F401

DUMP_SCRIPT = """
import json, os, sys
out = {k: v for k, v in os.environ.items() if k.startswith("SPOOLD_") or k == "EXTRA"}
out["stdin"] = json.loads(sys.stdin.read())
out["cwd"] = os.getcwd()
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh)
"""


def event_for(job_dir: Path, batch: dict, attempt: int = 1) -> HandlerEvent:
    return shared_event_for(job_dir, batch, "cmd", attempt)


def exec_handler(command: list[str], **settings: object) -> ExecHandler:
    return ExecHandler(handler_config(name="cmd", type="exec", command=command, **settings))


def test_command_gets_env_and_stdin(tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path / "spool")
    dump = tmp_path / "dump.json"
    handler = exec_handler([sys.executable, "-c", DUMP_SCRIPT, str(dump)], env={"EXTRA": "yes"})
    handler.handle(event_for(job_dir, batch))
    seen = json.loads(dump.read_text())
    assert seen["SPOOLD_JOB"] == "job1"
    assert seen["SPOOLD_STATUS"] == "completed"
    assert seen["SPOOLD_JOB_DIR"] == str(job_dir)
    assert seen["SPOOLD_OUTPUT"] == str(job_dir / "output.jsonl")
    assert seen["SPOOLD_ERRORS"] == str(job_dir / "errors.jsonl")
    assert seen["SPOOLD_BATCH"] == str(job_dir / "batch.json")
    assert seen["SPOOLD_IDEMPOTENCY_KEY"] == f"{batch['id']}:cmd"
    assert seen["EXTRA"] == "yes"
    assert seen["stdin"] == batch
    assert seen["cwd"] == str(job_dir)


def test_nonzero_exit_fails_with_stderr_tail(tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path)
    script = "import sys; print('noise\\n' * 5000, file=sys.stderr); print('the real reason', file=sys.stderr); sys.exit(3)"
    handler = exec_handler([sys.executable, "-c", script])
    with pytest.raises(HandlerError, match=r"exited with status 3: .*the real reason$"):
        handler.handle(event_for(job_dir, batch))


def test_missing_program_is_a_failed_attempt(tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path)
    handler = exec_handler([str(tmp_path / "no-such-program")])
    with pytest.raises(HandlerError, match="cannot start"):
        handler.handle(event_for(job_dir, batch))


def _gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper (containers' PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path / "spool")
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; echo started >&2; sleep 60"
    handler = exec_handler(["/bin/sh", "-c", script], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(HandlerError, match=r"timed out after 0.5s and was killed: started"):
        handler.handle(event_for(job_dir, batch))
    assert time.monotonic() - started < 5
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child):
        assert time.monotonic() < deadline, "the background child survived the timeout"
        time.sleep(0.02)


def test_exec_through_the_dispatcher_records_failure(tmp_path: Path, make_dispatcher) -> None:
    job_dir, batch = make_job(tmp_path)
    cmd = handler_config(
        name="cmd",
        type="exec",
        command=["/bin/sh", "-c", "echo disk full >&2; exit 1"],
        retry={"initial_backoff": 0.0, "max_attempts": 2},
    )
    dispatcher = make_dispatcher([cmd])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    result = read_batch(job_dir)["spoold"]["handlers"]["cmd"]
    assert result["status"] == "failed" and result["attempts"] == 2
    assert result["last_error"] == "/bin/sh exited with status 1: disk full"
    assert os.path.exists(job_dir / "output.jsonl")
