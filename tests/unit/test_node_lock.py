"""One name, one daemon (issue 9): the node lock, its heartbeat, and what a taken-over run counts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.engine.profiles import load_profiles
from spoold.job.active import JobContext
from spoold.job.commit import open_attempt
from spoold.job.start import start_job
from spoold.spool import lease as leases
from spoold.spool import nodelock
from spoold.spool.claim import claim
from spoold.spool.layout import Spool
from spoold.spool.nodelock import Holder, Me, NodeLost, NodeTaken, Verdict, judge

from inline_driver import Hooks
from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, child_env, drop_job, wait_for

HERE = Me(host="h1", pid=100, scope="boot-a/pid:[1]", started=5000)


def holder(**kw: object) -> Holder:
    base = {
        "node": "n",
        "host": "h1",
        "pid": 200,
        "scope": "boot-a/pid:[1]",
        "started": 7000,
        "run": "r",
        "since": 0.0,
        "renewed_at": 1000.0,
    }
    return Holder.model_validate({**base, **kw})


# ---- judge (pure) ----------------------------------------------------------------------------


def test_judge_same_host_decides_by_pid_and_start_time() -> None:
    alive = lambda pid: 7000  # noqa: E731 - the pid runs, started when the lock says
    gone = lambda pid: None  # noqa: E731
    reused = lambda pid: 9999  # noqa: E731 - another program got the pid since
    assert judge(None, HERE, 1000, 60, alive) is Verdict.FREE
    assert judge(holder(), HERE, 1000, 60, alive) is Verdict.ALIVE
    assert judge(holder(), HERE, 1000, 60, gone) is Verdict.DEAD
    assert judge(holder(), HERE, 1000, 60, reused) is Verdict.DEAD
    # a fresh heartbeat does not keep a dead local daemon's name: the pid decides at once
    assert judge(holder(renewed_at=999.9), HERE, 1000, 60, gone) is Verdict.DEAD
    # this very process (a daemon object it made and dropped)
    assert judge(holder(pid=100, started=5000), HERE, 1000, 60, alive) is Verdict.DEAD


def test_judge_another_host_or_boot_decides_by_heartbeat() -> None:
    never = lambda pid: pytest.fail("a pid on another host or boot means nothing here")  # noqa: E731
    for other in (holder(host="h2", scope="boot-b/pid:[1]"), holder(scope="boot-z/pid:[1]"), holder(scope="boot-a/pid:[9]")):
        assert judge(other, HERE, 1030, 60, never) is Verdict.UNKNOWN  # fresh: watch it
        assert judge(other, HERE, 1061, 60, never) is Verdict.DEAD  # older than lease_seconds


def test_run_is_alive_only_for_the_same_run() -> None:
    alive = lambda pid: 7000  # noqa: E731
    assert nodelock.run_is_alive(holder(run="r"), "r", HERE, 1000, 60, alive)
    assert not nodelock.run_is_alive(holder(run="r2"), "r", HERE, 1000, 60, alive)  # the node restarted since
    assert not nodelock.run_is_alive(holder(run="r"), "r", HERE, 1000, 60, lambda pid: None)
    assert not nodelock.run_is_alive(None, "r", HERE, 1000, 60, alive)
    assert not nodelock.run_is_alive(holder(run=""), "", HERE, 1000, 60, alive)  # records from before runs were named


def test_proc_start_of_this_process_and_of_none() -> None:
    assert nodelock.proc_start(os.getpid()) == nodelock.current_me().started > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert nodelock.proc_start(child.pid) is None


# ---- the files -------------------------------------------------------------------------------


def test_acquire_refuses_a_live_local_holder_then_takes_over_once_it_is_gone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = nodelock.current_me()
        other = Me(me.host, child.pid, me.scope, nodelock.proc_start(child.pid) or 0)
        first = nodelock.acquire(tmp_path, "gpu-0", 60, me=other)
        with pytest.raises(NodeTaken) as refused:
            nodelock.acquire(tmp_path, "gpu-0", 60)
        message = str(refused.value)
        assert "\n" not in message and f"pid {child.pid}" in message and f"host {me.host}" in message and "since " in message
    finally:
        child.kill()
        child.wait()
    second = nodelock.acquire(tmp_path, "gpu-0", 60)  # at once: the holder's pid is gone
    assert second.holder.gen == first.holder.gen + 1
    assert [p.name for p in (tmp_path / nodelock.NODES_DIR).iterdir()] == [second.path.name]
    with pytest.raises(NodeLost, match="another daemon took node id gpu-0 over"):
        first.renew()
    second.renew()
    second.release()
    assert not list((tmp_path / nodelock.NODES_DIR).iterdir())


def test_a_holder_on_another_host_is_watched_alive_if_it_renews(tmp_path: Path) -> None:
    remote = nodelock.acquire(tmp_path, "n", 60, me=Me("far-host", 4242, "other-boot/pid:[1]", 1))
    remote.interval = 0.3
    remote.keep(lambda message: None)
    try:
        started = time.monotonic()
        with pytest.raises(NodeTaken, match="host far-host, pid 4242"):
            nodelock.acquire(tmp_path, "n", 5)
        assert time.monotonic() - started < 4  # refused on the first renewal seen, not after lease_seconds
    finally:
        remote.release()


def test_a_silent_holder_on_another_host_is_taken_over_after_lease_seconds(tmp_path: Path) -> None:
    nodelock.acquire(tmp_path, "n", 60, me=Me("far-host", 4242, "other-boot/pid:[1]", 1))  # never renewed again
    started = time.monotonic()
    mine = nodelock.acquire(tmp_path, "n", 1.5)
    assert 1.4 <= time.monotonic() - started < 5
    assert mine.holder.gen == 2 and mine.holder.host == nodelock.current_me().host


def test_node_ids_are_quoted_into_file_names(tmp_path: Path) -> None:
    lock = nodelock.acquire(tmp_path, "../odd name/x", 60)
    assert lock.path.parent == tmp_path / nodelock.NODES_DIR and "/" not in lock.path.name
    assert nodelock.current(tmp_path / nodelock.NODES_DIR, "../odd name/x").run == lock.run


# ---- a taken-over run is not a crash ---------------------------------------------------------


@pytest.mark.parametrize("alive", [True, False])
def test_an_open_attempt_counts_only_if_its_daemon_is_gone(tmp_path: Path, alive: bool) -> None:
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line("a", "hi")], {})
    job = claim(spool, "job", "node-a")
    assert job is not None
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"}, lease_seconds=60)
    lock_a = nodelock.acquire(tmp_path, "node-a", 60)  # node-a's daemon: this process stands in for it
    ctx_a = JobContext(config=config, node="node-a", spool_root=tmp_path, profiles=load_profiles(), hooks=Hooks(), run_id=lock_a.run)
    started = start_job(ctx_a, job, leases.current(job))
    assert started is not None and not isinstance(started, str)
    open_attempt(started)  # node-a fed it to its engine, then stalled past lease_seconds, committing nothing
    record = job.load_record()
    assert record.open_attempt and (record.attempt_node, record.attempt_run) == ("node-a", lock_a.run)
    if not alive:
        lock_a.release()  # node-a's daemon is gone: its open attempt was a crash
    taken = leases.acquire(job, "node-b", leases.current(job))
    ctx_b = JobContext(config=config, node="node-b", spool_root=tmp_path, profiles=load_profiles(), hooks=Hooks(), run_id="run-b")
    assert start_job(ctx_b, job, taken) is not None
    assert job.load_record().failures == (0 if alive else 1)


# ---- real daemons ----------------------------------------------------------------------------


def _one_line_refusal(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.slow
def test_a_second_daemon_with_the_same_node_id_is_refused_in_one_line(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "a", node_id="same") as a:
        a.start()
        wait_for(lambda: "spoold ready" in a.log(), 30, what="the first daemon")
        second = subprocess.run(
            [sys.executable, "-m", "spoold", "run", "--config", str(a.config_path)],
            capture_output=True, text=True, timeout=60, env=child_env(), cwd=tmp_path,
        )  # fmt: skip
        assert second.returncode != 0
        line = _one_line_refusal(second.stdout + second.stderr)
        assert line.startswith("spoold run: node id same is in use by another running daemon")
        assert f"pid {a.proc.pid}" in line and "host " in line and "since " in line
        # the first is unharmed: it still runs jobs
        ids = [f"x{i}" for i in range(5)]
        drop_job(a.inbox, "still-mine", [chat_line(c, "hi") for c in ids], {})
        assert_exactly_once(a.wait_finished("still-mine"), ids)
        assert a.stop() == 0
    assert not list((a.spool / nodelock.NODES_DIR).iterdir())  # a clean stop removes the lock


@pytest.mark.slow
def test_a_restart_after_kill_9_starts_at_once_and_finishes_the_job(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "a", node_id="same", lease_seconds=60, engine={"window": 2}) as a:
        ids = [f"k{i}" for i in range(80)]
        drop_job(a.inbox, "crashed", [chat_line(c, "hi") for c in ids], {"chunk_size": 5})
        a.start({"SPOOLD_ECHO_DELAY": "0.03"})
        wait_for(lambda: LatestCheckpoint(a.spool / "processing" / "crashed" / ".spoold").exists(), 30, what="progress")
        a.kill()
        restarted = time.monotonic()
        a.start()
        wait_for(lambda: a.log().count("spoold ready") == 2, 15, what="the restart to be ready")
        assert time.monotonic() - restarted < 10  # not lease_seconds (60): the old pid is gone
        assert "taking it over" in a.log()
        job = a.wait_finished("crashed")
        assert_exactly_once(job, ids)
        assert json.loads((job / ".spoold" / "job.json").read_text())["failures"] == 0  # it made progress before the kill


@pytest.mark.slow
def test_a_stale_lock_from_another_host_is_taken_over_after_lease_seconds(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "a", node_id="moved", lease_seconds=3) as a:
        folder = a.spool / nodelock.NODES_DIR
        folder.mkdir(parents=True)
        now = time.time()
        stale = Holder(
            node="moved", host="old-host", pid=1234, scope="another-boot/pid:[1]", started=1, run="old", since=now - 3600, renewed_at=now
        )
        (folder / "node-moved.1.json").write_text(stale.model_dump_json(exclude={"gen"}))
        started = time.monotonic()
        a.start()
        wait_for(lambda: "spoold ready" in a.log(), 30, what="the daemon to start")
        waited = time.monotonic() - started
        assert waited >= 2.5, waited  # it watched the old holder for lease_seconds first
        assert re.search(r"node id moved is held by host old-host, pid 1234, since .*; waiting up to 3 s", a.log())
        assert [p.name for p in folder.iterdir()] == ["node-moved.2.json"]
        ids = ["s1", "s2"]
        drop_job(a.inbox, "after", [chat_line(c, "hi") for c in ids], {})
        assert_exactly_once(a.wait_finished("after"), ids)


def test_renewal_thread_reports_a_takeover_once(tmp_path: Path) -> None:
    lock = nodelock.acquire(tmp_path, "n", 60)
    lock.interval = 0.05
    lost: list[str] = []
    seen = threading.Event()
    lock.keep(lambda message: (lost.append(message), seen.set()))
    # another daemon judged us dead (we were frozen past lease_seconds) and created the next generation
    taker = holder(node="n", host="h9", pid=1, scope="x/y", run="taker", since=time.time(), renewed_at=time.time())
    (lock.folder / "node-n.2.json").write_text(taker.model_dump_json(exclude={"gen"}))
    assert seen.wait(5)
    time.sleep(0.2)
    assert len(lost) == 1 and "host h9, pid 1" in lost[0]
    lock.release()  # not ours any more: left in place
    assert nodelock.current(tmp_path / nodelock.NODES_DIR, "n").host == "h9"


@pytest.mark.slow
def test_a_daemon_whose_node_id_was_taken_over_stops_non_zero(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "a", node_id="frozen", lease_seconds=1.5) as a:
        a.start()
        wait_for(lambda: "spoold ready" in a.log(), 30, what="the daemon to start")
        folder = a.spool / nodelock.NODES_DIR
        assert [p.name for p in folder.iterdir()] == ["node-frozen.1.json"]
        # as if it had been frozen past lease_seconds and a daemon elsewhere took its name over
        taker = holder(node="frozen", host="elsewhere", pid=1, scope="x/y", run="taker", since=time.time(), renewed_at=time.time())
        (folder / "node-frozen.2.json").write_text(taker.model_dump_json(exclude={"gen"}))
        assert a.proc.wait(timeout=20) == 1
        assert "another daemon took node id frozen over (host elsewhere, pid 1" in a.log()
        assert (folder / "node-frozen.2.json").exists()  # the new holder's lock is left alone
