"""Issue 16 end to end: poison lines through the real daemon and `spoold validate`; an unexpected
exception while running a job is a failed attempt, not an endless retry."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.daemon.loop import Daemon
from spoold.engine.base import EngineRequest, EngineResult
from spoold.engine.echo import EchoEngine
from spoold.engine.profiles import load_profiles
from spoold.job.active import JobContext
from spoold.service.facade import Service
from spoold.service.gpu import GpuMonitor
from spoold.service.metrics import Metrics
from spoold.service.notify import Notifier
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.layout import Spool

from inline_driver import Hooks, run_inline
from spoold_helpers import SpooldProcess, chat_line, drop_job, read_records

POISON = [
    "[" * 10_000,  # RecursionError in json
    '{"custom_id": "deep", "prompt": "x", "a": ' + "[" * 200 + "]" * 200 + "}",  # parses, but past MAX_NESTING
    '{"custom_id": "big", "prompt": "x", "max_tokens": ' + "9" * 5000 + "}",
    '{"custom_id": "sur", "prompt": "\\ud800"}',
    '{"custom_id": "nul", "prompt": "a\x00b"}',
    '{"custom_id": "nan", "prompt": "x", "temperature": NaN}',
    '{"custom_id": "long", "prompt": "' + "z" * 20_000 + '"}',  # over max_line_bytes below
]
EXPECTED_CODES = ["invalid_json", "invalid_json", "invalid_json", "invalid_encoding", "invalid_json", "invalid_json", "line_too_long"]


def test_poison_lines_are_their_own_errors_and_the_job_goes_on(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, max_line_bytes=16384) as d:
        d.start()
        lines = [chat_line("good-1", "hello"), *POISON, chat_line("good-2", "world")]
        drop_job(d.inbox, "poison", lines, {"max_error_ratio": 1.0})
        job = d.wait_finished("poison", timeout=60)
        assert job.parent.name == "done", d.batch(job)
        records = read_records(job)
        assert len(records) == len(lines)
        good = sorted(r["custom_id"] for r in records if r["response"])
        assert good == ["good-1", "good-2"]
        errors = sorted((r["error"]["line"], r["error"]["code"]) for r in records if r["error"])
        assert errors == list(zip(range(2, 2 + len(POISON)), EXPECTED_CODES, strict=True))
        messages = {r["error"]["line"]: r["error"]["message"] for r in records if r["error"]}
        assert "nested too deeply" in messages[2] and "nested too deeply" in messages[3]
        assert "max_line_bytes" in messages[8]
        counts = d.batch(job)["request_counts"]
        assert (counts["completed"], counts["failed"]) == (2, len(POISON))
        assert d.stop() == 0
        log = d.log()
        assert "Traceback" not in log and "unexpected error" not in log, log


def test_validate_command_reports_poison_lines(tmp_path: Path) -> None:
    d = SpooldProcess(tmp_path, max_line_bytes=16384)
    path = tmp_path / "job.jsonl"
    path.write_text("\n".join([json.dumps(chat_line("ok", "hi")), *POISON]) + "\n")
    result = d.cli("validate", str(path))
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no max_error_ratio: one valid line runs
    assert "line 2: invalid_json: line is nested too deeply" in result.stdout
    assert f"line 8: line_too_long: line is {len(POISON[-1]):,} bytes, more than max_line_bytes (16,384)" in result.stdout
    assert "8 requests for model tiny-random, 1 valid, 7 invalid" in result.stdout


# ---- an unexpected exception while running a job --------------------------------------------------


class BuggyEngine(EchoEngine):
    """Echo, but `step` raises what no code path expects (not an EngineFailure)."""

    def __init__(self) -> None:
        super().__init__("tiny-random", delay=0)
        self.steps = 0

    def step(self) -> list[EngineResult]:
        self.steps += 1
        raise ZeroDivisionError("division by zero in a place nobody tested\nsecond line of the message")


def test_unexpected_error_is_a_failed_attempt_then_the_job_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "max_attempts": 3}, metrics={"listen": ""},
                    watch={"settle_seconds": 0})  # fmt: skip
    Spool(tmp_path).init()
    engine = BuggyEngine()
    service = Service(config, Notifier(None), Metrics(), GpuMonitor(nvml=None, environ={}))
    daemon = Daemon(config, loader=lambda cfg, profile: engine, service=service)
    drop_job(tmp_path / "inbox", "job", [chat_line("a", "hi"), chat_line("b", "there")], {})
    caplog.set_level(logging.DEBUG)
    now = time.time()
    for _ in range(400):  # claims and ends run on the daemon's threads; backoff is skipped by looking far ahead
        now += 1000
        daemon.tick(now=now)
        if (tmp_path / "failed" / "job" / "batch.json").exists():
            break
        time.sleep(0.01)
    assert engine.steps == 3, "one run per attempt: max_attempts runs, then no more"
    batch = json.loads((tmp_path / "failed" / "job" / "batch.json").read_text())
    reason = batch["errors"]["data"][0]["message"]
    assert reason == "unexpected error: ZeroDivisionError: division by zero in a place nobody tested (after 3 attempts)"
    assert not (tmp_path / "failed" / "job" / "output.jsonl").read_bytes(), "nothing was committed"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.DEBUG, [(r.levelname, r.getMessage()) for r in tracebacks]
    summary = "unexpected error: ZeroDivisionError: division by zero in a place nobody tested"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [*(f"{summary} (attempt {i} of 3)" for i in (1, 2, 3)), f"failed: {summary} (after 3 attempts)"]
    assert daemon.tick(now=now + 1000) is False  # nothing left to retry


# ---- an exception while one request enters the engine ---------------------------------------------


class PickyEngine(EchoEngine):
    """Echo, but `add` raises a plain TypeError for one request, as a buggy backend might."""

    def __init__(self) -> None:
        super().__init__("tiny-random", delay=0)

    def add(self, request: EngineRequest) -> EngineResult | None:
        if request.custom_id == "poison":
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return super().add(request)


def test_exception_in_engine_add_is_that_requests_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"r{i}" for i in range(30)]
    ids.insert(random.Random(16).randrange(30), "poison")
    drop_job(spool.inbox, "job", [chat_line(i, "hi") for i in ids], {"chunk_size": 7})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"})
    job = claim(spool, "job", "n1")
    assert job is not None
    ctx = JobContext(config=config, node="n1", spool_root=spool.root, profiles=load_profiles(), hooks=Hooks())
    assert run_inline(ctx, PickyEngine(), job, leases.current(job)) == "completed"
    records = read_records(spool.root / "done" / "job")
    assert sorted(r["custom_id"] for r in records) == sorted(ids)
    bad = [r for r in records if r["error"]]
    assert [r["custom_id"] for r in bad] == ["poison"]
    assert bad[0]["error"]["message"] == "the engine refused this request: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
