"""The engine core dies or hangs under a running daemon (issue 24): noticed in seconds, one ERROR line, reloaded
in-process, every job finishes exactly once. Real `spoold run`, real vLLM on the tiny model.

One daemon for both events (each model load is ~20-60 s here): `kill -9` of the engine core while three jobs
run, then SIGSTOP of the reloaded core under two new jobs (the step deadline, engine.step_timeout_seconds, ends
it the same way).
The times measured are printed (pytest -s) and bounded loosely (a shared CI machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, drop_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

STEP_TIMEOUT = 4
DIED = "engine of model tiny-random failed"


def _engine_core(d: SpooldProcess) -> psutil.Process | None:
    assert d.proc is not None
    for child in psutil.Process(d.proc.pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _chunks(d: SpooldProcess, name: str) -> int:
    ckpt = LatestCheckpoint(d.job_dir("processing", name) / ".spoold")
    try:
        return int(re.search(r'"chunks":\s*(\d+)', ckpt.read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return 0


def _progress(d: SpooldProcess, names: list[str]) -> int:
    return sum(_chunks(d, n) for n in names) + sum(d.job_dir("done", n).exists() for n in names) * 1000


def _after(d: SpooldProcess, event: str, pattern: str, count: int, started: float, timeout: float) -> float:
    wait_for(lambda: d.log().count(pattern) >= count, timeout, interval=0.05, what=f"{pattern!r} after {event}")
    return time.monotonic() - started


def _all_in_engine(d: SpooldProcess, names: dict[str, list[str]], loads: int) -> bool:
    """The model is loaded and stepping (a first checkpoint), every job still running: with a window wider
    than all their lines together, every job's lines are then in the engine."""
    running = all(d.job_dir("processing", n).exists() for n in names)
    return running and d.log().count("model tiny-random loaded in") >= loads and any(_chunks(d, n) > 0 for n in names)


def _drop(d: SpooldProcess, names: list[str], lines: int) -> dict[str, list[str]]:
    ids = {n: [f"{n}-{i}" for i in range(lines)] for n in names}
    for n in names:
        drop_job(d.inbox, n, [chat_line(c, f"Tell me about {c}.", max_tokens=12, temperature=0) for c in ids[n]], {"chunk_size": 10})
    return ids


def _finish(d: SpooldProcess, ids: dict[str, list[str]]) -> None:
    for n, custom_ids in ids.items():
        job = d.wait_finished(n, timeout=600)
        assert job.parent.name == "done", d.batch(job).get("errors")
        assert_exactly_once(job, custom_ids)


def test_engine_core_killed_then_stopped_under_running_jobs(tmp_path: Path, tiny_state_dir: Path) -> None:
    engine = {
        "backend": "vllm", "state_dir": str(tiny_state_dir), "window": 2048, "max_active_jobs": 3,
        "step_timeout_seconds": STEP_TIMEOUT, "max_attempts": 3,
    }  # fmt: skip
    with SpooldProcess(tmp_path, engine=engine, watch={"settle_seconds": 0.3, "poll_interval": 0.3}, lease_seconds=10) as d:
        # 1. kill -9 of the engine core with three jobs in flight (a window this wide takes all three at once)
        first = _drop(d, ["a0", "a1", "a2"], 600)
        d.start({"VLLM_CPU_KVCACHE_SPACE": "1"})
        wait_for(lambda: _all_in_engine(d, first, 1), 300, what="all three jobs in the engine")
        core = _engine_core(d)
        assert core is not None, "no VLLM::EngineCore process under the daemon"
        killed = time.monotonic()
        os.kill(core.pid, signal.SIGKILL)
        to_error = _after(d, "kill -9", DIED, 1, killed, 30)
        to_loaded = _after(d, "kill -9", "model tiny-random loaded in", 2, killed, 300)
        before = _progress(d, list(first))
        wait_for(lambda: _progress(d, list(first)) > before, 120, what="work running again after the reload")
        to_work = time.monotonic() - killed
        died = next(line for line in d.log().splitlines() if DIED in line)
        assert "was killed by SIGKILL" in died and "jobs in flight: a" in died, died
        _finish(d, first)

        # 2. SIGSTOP of the reloaded core: the step deadline ends it the same way
        second = _drop(d, ["b0", "b1"], 600)
        wait_for(lambda: _all_in_engine(d, second, 2), 120, what="both new jobs in the engine")
        core = _engine_core(d)
        assert core is not None
        stopped = time.monotonic()
        os.kill(core.pid, signal.SIGSTOP)
        try:
            stop_to_error = _after(d, "SIGSTOP", DIED, 2, stopped, STEP_TIMEOUT + 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(core.pid, signal.SIGCONT)  # if the deadline missed it, let the test end cleanly
        to_loaded_again = _after(d, "SIGSTOP", "model tiny-random loaded in", 3, stopped, 300)
        _finish(d, second)

        log = d.log()
        deaths = [line for line in log.splitlines() if DIED in line]
        assert len(deaths) == 2, deaths  # one ERROR line per death, however many jobs were in flight
        assert f"gave no output for {STEP_TIMEOUT} s" in deaths[1] and "jobs in flight: b" in deaths[1], deaths[1]
        assert "Traceback" not in log
        assert d.stop() == 0
        print(
            f"\nkill -9 -> ERROR {to_error:.2f} s, -> model loaded {to_loaded:.1f} s, -> work running {to_work:.1f} s; "
            f"SIGSTOP -> ERROR {stop_to_error:.2f} s (deadline {STEP_TIMEOUT} s), -> model loaded {to_loaded_again:.1f} s"
        )
        assert to_error < 10 and stop_to_error < STEP_TIMEOUT + 15
