"""The daemon's helper threads and processes run below the engine's CPU priority; its main loop does not."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from spoold.daemon.lanes import Lanes
from spoold.job.prevalidate import Prevalidator
from spoold.priority import BACKGROUND_NICE, background

from spoold_helpers import SpooldProcess, chat_line, drop_job


def _mine() -> tuple[int, int]:
    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _task_priorities(pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (scheduling policy, nice) of every thread of a process, from /proc."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that just ended
        found[int(tid)] = (int(fields[38]), int(fields[16]))  # stat fields 41 (policy) and 19 (nice)
    return found


def test_background_lowers_only_the_calling_thread() -> None:
    seen: list[tuple[int, int]] = []
    thread = threading.Thread(target=lambda: (background(), seen.append(_mine())))
    thread.start()
    thread.join()
    assert seen == [(os.SCHED_BATCH, BACKGROUND_NICE)]
    assert _mine() == (os.SCHED_OTHER, 0)


def test_io_lanes_and_the_prevalidating_process_run_in_the_background() -> None:
    lanes = Lanes(2, "t")
    try:
        assert {lanes.submit(key, _mine).result() for key in ("a", "b", "c", "d")} == {(os.SCHED_BATCH, BACKGROUND_NICE)}
    finally:
        lanes.shutdown()
    pre = Prevalidator()
    try:
        worker = pre._start_worker()
        assert worker.submit(os.sched_getscheduler, 0).result(60) == os.SCHED_BATCH
        assert worker.submit(os.getpriority, os.PRIO_PROCESS, 0).result(60) == BACKGROUND_NICE
    finally:
        pre.close()


def test_a_running_daemon_feeds_the_engine_at_normal_priority_and_does_its_bookkeeping_below_it(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path) as d:
        d.start()
        drop_job(d.inbox, "job", [chat_line(f"r{i}", "hi") for i in range(5)])
        d.wait_finished("job")
        threads = _task_priorities(d.proc.pid)
        assert threads[d.proc.pid] == (os.SCHED_OTHER, 0)  # the main loop
        lowered = [tid for tid, prio in threads.items() if prio == (os.SCHED_BATCH, BACKGROUND_NICE)]
        assert lowered  # the threads that claimed, started and finished the job
        assert set(threads.values()) <= {(os.SCHED_OTHER, 0), (os.SCHED_BATCH, BACKGROUND_NICE)}
        assert d.stop() == 0
