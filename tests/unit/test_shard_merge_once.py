"""A sharded job is merged once, also when the daemon's own look at processing/ runs while its last shard ends.

The symptom on a real daemon (400,000 lines, default shards): "merging 4 shards" logged twice, then
"No such file or directory (.../processing/JOB/.spoold/job.json): pausing new work for 5 s": the daemon's
scan offered it the merge its job I/O thread was running (the job's lease was "its node's"), and a merge
took over whatever job lease was current, a merge in progress included. benchmarks-sized inputs make the
race likely on a real daemon; here it is driven step by step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from spoold.config import Config
from spoold.daemon.resume import Resumable, find_resumable
from spoold.engine.echo import EchoEngine
from spoold.job import start
from spoold.job.active import ActiveJob
from spoold.job.shards import end
from spoold.job.shards.plan import ShardDir, load_plan, shard_dirs
from spoold.job.start import start_job
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool

from inline_driver import Hooks, make_ctx, run_many
from spoold_helpers import assert_exactly_once, chat_line, drop_job

T = TypeVar("T")


def _cut(tmp_path: Path):
    """A 200-line job in 2 shards, claimed and cut by this process (node n1); the shards are run by each test."""
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"m{i}" for i in range(200)]
    drop_job(spool.inbox, "big", [chat_line(c, f"words for {c}") for c in ids], {"chunk_size": 16, "shards": 2})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 8})
    ctx = make_ctx(spool, Hooks(), config)
    job = claim(spool, "big", ctx.node)
    assert job is not None
    first = start_job(ctx, job, leases.current(job))
    assert isinstance(first, ActiveJob)
    first.close_reader()
    return spool, ids, ctx, job, shard_dirs(job, load_plan(job))


def _run(ctx, shard: ShardDir) -> dict[str, str]:
    return run_many(ctx, EchoEngine("tiny-random", delay=0), [(shard, leases.acquire(shard, ctx.node, leases.current(shard)))])


def _scan(spool: Spool, ctx) -> list[Resumable]:
    """The daemon's look at processing/ (every poll_interval, on its main thread), as Candidates._find_resumable makes it."""
    return find_resumable(
        spool, ctx.node, ctx.config.lease_seconds, set(), {}, lambda name, path: (0, None), lambda name, model: False, time.time()
    )


def _last_shard_ends_while_the_loop_looks(
    spool: Spool, ctx, job: JobDir, shards: list[ShardDir], monkeypatch: pytest.MonkeyPatch, then: Callable[[Resumable], T]
) -> list[T]:
    """Run both shards of a long job (the cutter's lease long stale); the daemon's scan runs right after the last
    shard records its outcome, before that shard's own merge attempt, and `then` is done at once with each find."""
    cutter = leases.current(job)
    assert cutter is not None
    (job.state / f"lease.{cutter.gen}.json").write_text(json.dumps({**cutter.model_dump(), "renewed_at": 0}))
    _run(ctx, shards[0])
    done: list[T] = []
    real = start.record_outcome

    def outcome_then_the_loop_looks(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - record_outcome's own
        recorded = real(*args, **kwargs)
        done.extend(then(r) for r in _scan(spool, ctx))
        return recorded

    with monkeypatch.context() as patch:
        patch.setattr(start, "record_outcome", outcome_then_the_loop_looks)
        _run(ctx, shards[1])
    return done


def test_the_daemon_is_not_offered_the_merge_it_is_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, ids, ctx, job, shards = _cut(tmp_path)
    _run(ctx, shards[0])
    offered: list[str] = []
    real = end.merge

    def merge_while_the_loop_looks(*args: object, **kwargs: object) -> None:
        offered.extend(r.candidate.name for r in _scan(spool, ctx))
        real(*args, **kwargs)

    monkeypatch.setattr(end, "merge", merge_while_the_loop_looks)
    assert _run(ctx, shards[1])["big#2"] == "completed"
    assert offered == [], "a merge this very daemon holds the fresh lease of is not a candidate"
    done = tmp_path / "done" / "big"
    assert_exactly_once(done, ids)
    assert json.loads((done / "batch.json").read_text())["request_counts"] == {"total": 200, "completed": 200, "failed": 0}


def test_a_merge_the_loop_took_first_is_not_run_again_by_the_last_shards_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long job: the cutter's lease is long stale when the last shard ends, so the scan right after that
    shard records its outcome offers the merge, and a job-start thread takes the job's next lease. The
    shard's end must leave the merge to it (it used to take the lease after that one and merge as well)."""
    spool, ids, ctx, job, shards = _cut(tmp_path)
    taken = _last_shard_ends_while_the_loop_looks(  # Starts._start takes the job's next lease, and is preempted
        spool, ctx, job, shards, monkeypatch, lambda r: (r.candidate.name, leases.acquire(r.job, ctx.node, r.lease))
    )
    assert [(name, lease is not None) for name, lease in taken] == [("big", True)]
    assert (tmp_path / "processing" / "big").is_dir(), "the shard's end left the merge to the thread that won it"
    lease = taken[0][1]
    assert lease is not None
    assert start_job(ctx, JobDir(job.path), lease) == "completed"  # the job-start thread goes on: the one merge
    done = tmp_path / "done" / "big"
    assert_exactly_once(done, ids)
    batch = json.loads((done / "batch.json").read_text())
    assert batch["request_counts"] == {"total": 200, "completed": 200, "failed": 0}
    assert [s["status"] for s in batch["spoold"]["shards"]] == ["completed", "completed"]


def test_a_candidate_whose_job_left_processing_since_the_scan_is_dropped_not_disk_trouble(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's candidates wait for a free slot; one whose job was merged and moved to done/ meanwhile is
    simply gone (it used to fail its lease's create with ENOENT: "pausing new work")."""
    from spoold.daemon.base import Choice
    from spoold.daemon.loop import Daemon
    from spoold.service.facade import Service
    from spoold.service.gpu import GpuMonitor
    from spoold.service.metrics import Metrics
    from spoold.service.notify import Notifier

    spool, ids, ctx, job, shards = _cut(tmp_path)
    found = _last_shard_ends_while_the_loop_looks(spool, ctx, job, shards, monkeypatch, lambda r: r)  # not started: no free slot
    assert [r.candidate.name for r in found] == ["big"] and (tmp_path / "done" / "big").is_dir()
    config = Config(spool_dir=tmp_path, node_id=ctx.node, engine={"backend": "echo"}, metrics={"listen": ""})
    service = Service(config, Notifier(None), Metrics(), GpuMonitor(nvml=None, environ={}))
    daemon = Daemon(config, loader=lambda cfg, profile: EchoEngine("tiny-random", delay=0), service=service)
    try:
        assert daemon._start(Choice(found[0].candidate, None, found[0].job, found[0].lease)) is None  # noqa: SLF001
    finally:
        daemon.starter.shutdown(wait=True)
        daemon.io.shutdown(wait=True)
    assert_exactly_once(tmp_path / "done" / "big", ids)
