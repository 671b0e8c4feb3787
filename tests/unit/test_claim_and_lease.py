"""Claims and leases under contention: real processes race; exactly one wins."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

from spoold.fsutil import append_durably, truncate_to
from spoold.spool import lease as leases
from spoold.spool.claim import claim, recover_claims
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.states import JobState, move_job

from spoold_helpers import chat_line, drop_job


def _claim_worker(root: str, node: str, start: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[name-defined]
    start.wait()
    job = claim(Spool(Path(root)), "race", node)
    out.put((node, job.name if job else None))


def test_many_processes_claim_one_job_exactly_one_wins(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    for round_ in range(5):
        spool = Spool(tmp_path / str(round_))
        spool.init()
        drop_job(spool.inbox, "race", [chat_line("a", "hi")], {})
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_claim_worker, args=(str(spool.root), f"n{i}", start, out)) for i in range(6)]
        for p in procs:
            p.start()
        start.set()
        results = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        winners = [node for node, name in results if name]
        assert len(winners) == 1, results
        assert [j.name for j in spool.jobs(JobState.PROCESSING)] == ["race"]
        assert not any(n.startswith(".claim-") for n in os.listdir(spool.processing))
        assert list(spool.inbox.iterdir()) == []


def test_claim_gets_a_unique_name_when_done_has_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    (spool.root / "done" / "x").mkdir()
    (spool.root / "done" / "x" / "batch.json").write_text("{}")
    drop_job(spool.inbox, "x", [chat_line("a", "hi")], {})
    job = claim(spool, "x", "n1")
    assert job is not None and job.name == "x.2"
    assert job.load_record().original_name == "x"


def test_interrupted_claim_is_finished_on_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "half", [chat_line("a", "hi")], {"priority": 1})
    # a crash right after the claim rename: staging folder holds the input, sidecar still in inbox
    staging = spool.processing / ".claim-deadbeef"
    (staging / ".spoold").mkdir(parents=True)
    (staging / ".spoold" / "claimer.json").write_text('{"node": "n1", "pid": 1, "name": "half", "at": 0}')
    os.rename(spool.inbox / "half.jsonl", staging / "input.jsonl")
    assert recover_claims(spool, "other-node", lease_seconds=3600) == []  # not theirs, not stale
    [job] = recover_claims(spool, "n1", lease_seconds=3600)
    assert job.name == "half" and job.meta.exists() and job.input.exists()
    assert leases.current(job) is not None and leases.current(job).node == "n1"
    assert list(spool.inbox.iterdir()) == []


def test_a_claim_of_this_very_process_is_left_to_finish(tmp_path: Path) -> None:
    """Recovery runs on the main thread while the job-start thread may be mid-claim (same node, same pid)."""
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "busy", [chat_line("a", "hi")], {})
    staging = spool.processing / ".claim-inflight"
    (staging / ".spoold").mkdir(parents=True)
    (staging / ".spoold" / "claimer.json").write_text(json.dumps({"node": "n1", "pid": os.getpid(), "name": "busy", "at": 0}))
    os.rename(spool.inbox / "busy.jsonl", staging / "input.jsonl")
    assert recover_claims(spool, "n1", lease_seconds=3600) == []
    assert staging.is_dir()
    [job] = recover_claims(spool, "n1", lease_seconds=0)  # unless it is older than a lease period
    assert job.name == "busy"


def _acquire_worker(path: str, node: str, start: mp.synchronize.Barrier, out: mp.Queue) -> None:  # type: ignore[name-defined]
    job = JobDir(Path(path))
    seen = leases.current(job)  # every worker judged the same stale lease (the daemon checks staleness first)
    start.wait()
    out.put((node, leases.acquire(job, node, seen) is not None))


def test_stale_lease_is_taken_over_by_exactly_one(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "job")
    job.state.mkdir(parents=True)
    first = leases.acquire(job, "dead", None)
    assert first is not None
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_acquire_worker, args=(str(job.path), f"n{i}", start, out)) for i in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(won for _, won in results) == 1, results
    winner = next(node for node, won in results if won)
    assert leases.current(job).node == winner and leases.current(job).gen == 2
    try:
        leases.renew(job, first)
    except leases.LeaseLost:
        pass
    else:
        raise AssertionError("the old owner kept renewing a lease it lost")


def test_lease_staleness() -> None:
    lease = leases.Lease(node="a", pid=1, renewed_at=100.0)
    assert not leases.is_stale(lease, 0, 150, 60)
    assert leases.is_stale(lease, 0, 161, 60)
    assert leases.is_stale(None, 10, 100, 60) and not leases.is_stale(None, 50, 100, 60)


def test_truncate_cuts_torn_tail_and_refuses_short_files(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    good = append_durably(path, b'{"a": 1}\n')
    append_durably(path, b'{"a": 2')
    assert truncate_to(path, good) == 7
    assert path.read_bytes() == b'{"a": 1}\n'
    try:
        truncate_to(path, good + 5)
    except ValueError as exc:
        assert "shorter than its recorded good length" in str(exc)
    else:
        raise AssertionError("a file shorter than its checkpoint must not pass")


def test_move_job_refuses_unknown_transitions_and_never_overwrites(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    for name in ("a", "b"):
        (spool.processing / name).mkdir()
        (spool.processing / name / "f").write_text(name)
    (spool.root / "done" / "a").mkdir()
    (spool.root / "done" / "a" / "f").write_text("old")
    moved = move_job(spool.root, spool.processing / "a", JobState.PROCESSING, JobState.DONE)
    assert moved.name == "a.2" and (spool.root / "done" / "a" / "f").read_text() == "old"
    try:
        move_job(spool.root, spool.processing / "b", JobState.DONE, JobState.PROCESSING)
    except Exception as exc:
        assert "cannot move" in str(exc)
    else:
        raise AssertionError("done -> processing must be refused")


def test_lease_is_kept_alive_while_the_loop_blocks(tmp_path: Path) -> None:
    """The keeper renews a claimed job's lease from its own thread while the main loop is busy (a model load)."""
    import time

    from spoold.config import Config
    from spoold.daemon.keeper import LeaseKeeper
    from spoold.engine.profiles import load_profiles
    from spoold.job.active import JobContext
    from spoold.job.start import start_job

    from inline_driver import Hooks

    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line("a", "hi")], {})
    job = claim(spool, "job", "n1")
    assert job is not None
    lease = leases.current(job)
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"}, lease_seconds=0.15)
    active = start_job(JobContext(config=config, node="n1", spool_root=tmp_path, profiles=load_profiles(), hooks=Hooks()), job, lease)
    keeper = LeaseKeeper(interval=0.05)
    keeper.add(active)
    keeper.start()
    try:
        time.sleep(0.3)  # stands in for a model load
    finally:
        keeper.stop()
    assert active.lease.renewed_at > lease.renewed_at
    assert leases.current(job).renewed_at == active.lease.renewed_at
