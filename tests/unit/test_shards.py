"""Shards and per-generation segments, in-process: the plan, the merge, crashes during it, and fencing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.engine.echo import EchoEngine
from spoold.engine.loop import EngineLoop
from spoold.job import segments
from spoold.job.active import ActiveJob
from spoold.job.checkpoint import Checkpoint, latest_gen, load_checkpoint, save_checkpoint
from spoold.job.commit import close, commit
from spoold.job.shards.plan import ShardDir, cut_spans, load_plan, shard_count, shard_dirs
from spoold.job.start import start_job
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool

from inline_driver import Crash, Hooks, make_ctx, run_many
from spoold_helpers import assert_exactly_once, chat_line, drop_job, read_records

# ---- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_spans_cover_the_file_and_start_at_line_starts(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = [b"x" * rng.choice([0, 1, 5, 40, 300]) for _ in range(rng.randint(1, 400))]
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.7 else b"")
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    count = rng.randint(1, 12)
    spans = cut_spans(path, count)
    assert 1 <= len(spans) <= count
    assert spans[0].start == 0 and spans[-1].end == len(data)
    for a, b in zip(spans, spans[1:]):
        assert a.end == b.start and data[b.start - 1 : b.start] == b"\n"
        assert b.first_line == a.first_line + a.lines
    for span in spans:  # the line numbers are those of the whole file
        assert span.first_line == data[: span.start].count(b"\n") + 1
        assert span.lines == len(data[span.start : span.end].splitlines())


def test_shard_count() -> None:
    assert shard_count(None, 10_000, None) == 1  # no automatic sharding unless configured
    assert shard_count(4, 10_000, None) == 4
    assert shard_count(4, 3, None) == 3  # never more shards than lines
    assert shard_count(None, 250_000, 100_000) == 2
    assert shard_count(None, 100_000, 100_000) == 1
    assert shard_count(None, 50_000_000, 100_000) == 64  # at most 64
    assert shard_count(1, 50_000_000, 100_000) == 1  # the sidecar wins


# ---- generations and segments ----------------------------------------------------------------


def test_the_highest_generation_checkpoint_decides(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(gen=2, succeeded=5, output_bytes=50))
    save_checkpoint(tmp_path, Checkpoint(gen=3, succeeded=7, inherited={2: (50, 0)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.3.json"]
    save_checkpoint(tmp_path, Checkpoint(gen=2, succeeded=99, output_bytes=990))  # a frozen former owner wakes
    assert latest_gen(tmp_path) == 3
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt.gen, ckpt.succeeded, ckpt.segments()) == (3, 7, {2: (50, 0), 3: (0, 0)})


def test_merge_copies_only_the_named_bytes_and_can_run_again(tmp_path: Path) -> None:
    state = tmp_path / ".spoold"
    state.mkdir()
    seg1 = segments.segment_path(tmp_path, state, 1, "output")
    seg2 = segments.segment_path(tmp_path, state, 2, "output")
    seg1.write_bytes(b"a1\na2\nLATE-FROM-GEN-1\n")  # gen 1 appended after gen 2 took over
    seg2.write_bytes(b"b1\nTORN")
    ckpt = Checkpoint(gen=2, inherited={1: (6, 0)}, output_bytes=3)
    segments.merge(tmp_path, [(state, ckpt)], own=(state, 2))
    assert (tmp_path / "output.jsonl").read_bytes() == b"a1\na2\nb1\n"
    assert (tmp_path / "errors.jsonl").read_bytes() == b""
    segments.merge(tmp_path, [(state, ckpt)], own=(state, 2))  # a crash after the merge: merged again
    assert (tmp_path / "output.jsonl").read_bytes() == b"a1\na2\nb1\n"


def test_one_generation_of_our_own_is_renamed_into_place_and_a_rerun_finds_it(tmp_path: Path) -> None:
    state = tmp_path / ".spoold"
    state.mkdir()
    seg = segments.segment_path(tmp_path, state, 4, "output")
    seg.write_bytes(b"r1\nr2\ntorn")
    ckpt = Checkpoint(gen=4, output_bytes=6)
    segments.merge(tmp_path, [(state, ckpt)], own=(state, 4))
    assert not seg.exists() and (tmp_path / "output.jsonl").read_bytes() == b"r1\nr2\n"
    segments.merge(tmp_path, [(state, ckpt.carried_to(5))], own=(state, 5))  # resumed after a crash: gen 5
    assert (tmp_path / "output.jsonl").read_bytes() == b"r1\nr2\n"


def test_a_checkpoint_from_before_segments_is_generation_zero(tmp_path: Path) -> None:
    state = tmp_path / ".spoold"
    state.mkdir()
    (tmp_path / "output.jsonl").write_bytes(b"old1\nold2\ntorn")
    (state / "checkpoint.json").write_text(json.dumps({"next_line": 3, "next_offset": 40, "output_bytes": 10, "succeeded": 2}))
    ckpt = load_checkpoint(state).carried_to(3)
    segments.segment_path(tmp_path, state, 3, "output").write_bytes(b"new3\n")
    segments.merge(tmp_path, [(state, ckpt.model_copy(update={"output_bytes": 5}))], own=(state, 3))
    assert (tmp_path / "output.jsonl").read_bytes() == b"old1\nold2\nnew3\n"


# ---- sharded jobs in-process -----------------------------------------------------------------------


def _sharded(tmp_path: Path, n_lines: int = 300, shards: int = 4, **sidecar: object):
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"s{i}" for i in range(n_lines)]
    lines: list[object] = [chat_line(c, f"words for {c}") for c in ids]
    lines[10] = "not json"  # a line error, in shard 1
    lines.insert(200, "")  # a blank line
    lines.append(chat_line("s5", "a duplicate custom_id, in the last shard"))
    drop_job(spool.inbox, "big", lines, {"chunk_size": 16, "shards": shards, **sidecar})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 8, "max_attempts": 3})
    return spool, ids, config


def _assert_once(done: Path, ids: list[str]) -> None:
    """Every line of _sharded's input has one record: line 11 (not JSON) and line 302 (a duplicate) as errors."""
    records = read_records(done)
    successes = sorted(r["custom_id"] for r in records if not r["error"])
    assert successes == sorted(set(ids) - {"s10"})
    assert sorted(r["error"]["line"] for r in records if r["error"]) == [11, 302]


def _run(ctx, shard, seen=...) -> dict[str, str]:
    """Run one shard to its end on a fresh echo engine, taking it over from `seen` (default: its current lease)."""
    lease = leases.acquire(shard, ctx.node, leases.current(shard) if seen is ... else seen)
    return run_many(ctx, EchoEngine("tiny-random", delay=0), [(shard, lease)])


def _start_first(spool: Spool, ctx) -> tuple[JobDir, object]:
    job = claim(spool, "big", "n1")
    assert job is not None
    first = start_job(ctx, job, leases.current(job))
    assert isinstance(first, ActiveJob) and first.name == "big#1"
    return job, first


def _cut(spool: Spool, ctx) -> tuple[JobDir, list[ShardDir]]:
    """Claim and cut the job; the run of shard 1 that the claim started is dropped: each test runs the shards itself."""
    job, first = _start_first(spool, ctx)
    first.close_reader()
    return job, shard_dirs(job, load_plan(job))


def test_a_sharded_job_runs_shard_by_shard_and_is_merged_once(tmp_path: Path) -> None:
    spool, ids, config = _sharded(tmp_path)
    hooks = Hooks()
    ctx = make_ctx(spool, hooks, config)
    job, first = _start_first(spool, ctx)
    plan = load_plan(job)
    assert plan is not None and plan.count == 4
    first.close_reader()
    outcomes: dict[str, str] = {}
    for shard in reversed(shard_dirs(job, plan)):  # any order: the last one to end merges
        outcomes.update(_run(ctx, shard))
    assert outcomes["big#4"] == "completed" and outcomes["big#1"] == "completed"  # the last to end reports the job
    done = tmp_path / "done" / "big"
    _assert_once(done, ids)
    records = read_records(done)
    errors = [r for r in records if r["error"]]
    assert {e["error"]["code"] for e in errors} == {"invalid_json", "duplicate_custom_id"}
    assert {e["error"]["line"] for e in errors} == {11, 302}  # line numbers of the whole input
    batch = json.loads((done / "batch.json").read_text())
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 301, "completed": 299, "failed": 2}
    assert [s["status"] for s in batch["spoold"]["shards"]] == ["completed"] * 4
    assert sum(s["done"] for s in batch["spoold"]["shards"]) == 301
    assert not list(done.rglob("seg.*.jsonl")), "segments are removed once merged"


def test_a_crash_during_the_merge_finishes_on_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, ids, config = _sharded(tmp_path, shards=3)
    hooks = Hooks()
    ctx = make_ctx(spool, hooks, config)
    job, shards = _cut(spool, ctx)
    for shard in shards[:2]:
        _run(ctx, shard)
    real = segments._concatenate
    calls = []

    def crash_on_errors(final: Path, pieces: list) -> None:
        calls.append(final.name)
        if final.name == "errors.jsonl":
            raise Crash()  # kill -9 with output.jsonl merged, errors.jsonl not
        real(final, pieces)

    monkeypatch.setattr(segments, "_concatenate", crash_on_errors)
    with pytest.raises(Crash):
        _run(ctx, shards[2])
    monkeypatch.setattr(segments, "_concatenate", real)
    assert (tmp_path / "processing" / "big" / "output.jsonl").exists() and calls == ["output.jsonl", "errors.jsonl"]
    # the restarted daemon (another run: the merger's lease is from a dead process) takes the job and merges again
    ctx2 = make_ctx(spool, hooks, config)
    ctx2.node = "n2"
    status = start_job(ctx2, job, leases.acquire(job, "n2", leases.current(job)))
    assert status == "completed"
    _assert_once(tmp_path / "done" / "big", ids)


def test_a_shard_that_fails_for_good_fails_the_job_and_stops_the_others(tmp_path: Path) -> None:
    spool, ids, config = _sharded(tmp_path, shards=3)
    hooks = Hooks()
    ctx = make_ctx(spool, hooks, config)
    job, shards = _cut(spool, ctx)
    rec = shards[1].load_or_new_record(job.load_record())
    rec.failures, rec.last_error = 3, "engine error: out of memory"
    shards[1].save_record(rec)
    outcomes = _run(ctx, shards[1], None)
    assert outcomes["big#2"] == "retry"  # the shard failed; the job is not merged while shard 1 is live...
    assert shards[0].cancel_requested(), "the other shards are told to stop"
    leases.acquire(shards[0], "n9", leases.current(shards[0]))  # ...until its owner stops (here: another node, dead)
    stale = leases.current(shards[0])
    (shards[0].state / f"lease.{stale.gen}.json").write_text(json.dumps({**stale.model_dump(), "renewed_at": 0}))
    outcomes = _run(ctx, shards[2], None)
    assert outcomes["big#3"] == "failed"
    failed = tmp_path / "failed" / "big"
    batch = json.loads((failed / "batch.json").read_text())
    assert "shard 2 of 3 failed" in batch["errors"]["data"][0]["message"]
    assert [s["status"] for s in batch["spoold"]["shards"]] == ["cancelled", "failed", "cancelled"]
    custom = [r["custom_id"] for r in read_records(failed)]
    assert len(custom) == len(set(custom)), "what was done is kept, once"
    # requeued, it starts afresh (its shard state goes with the failed attempt) and runs to the end
    from spoold.control.cancel import requeue

    requeue(spool, "big")
    job, shards = _cut(spool, ctx)
    assert load_plan(job).count == len(shards) == 3
    for shard in shards:
        _run(ctx, shard)
    _assert_once(tmp_path / "done" / "big", ids)


def test_cancel_reaches_every_shard(tmp_path: Path) -> None:
    spool, ids, config = _sharded(tmp_path, shards=2)
    hooks = Hooks()
    ctx = make_ctx(spool, hooks, config)
    job, shards = _cut(spool, ctx)
    _run(ctx, shards[0])
    job.cancel_marker.touch()
    outcomes = _run(ctx, shards[1], None)
    assert outcomes["big#2"] == "cancelled"
    batch = json.loads((tmp_path / "done" / "big" / "batch.json").read_text())
    assert batch["status"] == "cancelled" and batch["request_counts"]["completed"] + batch["request_counts"]["failed"] >= 150


# ---- fencing -------------------------------------------------------------------------------------------


def _owned_by_a(tmp_path: Path, ids: list[str]):
    """A job of `ids` claimed and started by daemon "a"; B's context for the takeover."""
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line(c, "hi") for c in ids], {"chunk_size": 10})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 4})
    job = claim(spool, "job", "a")
    ctx_a = make_ctx(spool, Hooks(), config)
    ctx_a.node = "a"
    a = start_job(ctx_a, job, leases.current(job))
    assert isinstance(a, ActiveJob)
    ctx_b = make_ctx(spool, Hooks(), config)
    ctx_b.node = "b"
    return job, a, ctx_b


def test_a_frozen_owner_that_wakes_inside_a_commit_adds_nothing_to_the_results(tmp_path: Path) -> None:
    """Owner A passes its lease check, freezes, B takes over and finishes; A then appends and checkpoints."""
    ids = [f"f{i}" for i in range(100)]
    job, a, ctx_b = _owned_by_a(tmp_path, ids)
    loop = EngineLoop(EchoEngine("tiny-random", delay=0))
    while len(a._cuts) < 3:  # noqa: SLF001 - three chunks finished in memory
        loop.fill([a], 4)
        loop.step()
    cuts = a.full_cuts()
    commit(a, cuts[0])  # one committed chunk
    frozen_cut = cuts[1]
    # B takes the job over (A's lease went stale while A was frozen) and runs it to the end
    outcomes = run_many(ctx_b, EchoEngine("tiny-random", delay=0), [(job, leases.acquire(job, "b", leases.current(job)))])
    assert outcomes["job"] == "completed"
    done = tmp_path / "done" / "job"
    before = (done / "output.jsonl").read_bytes()
    # A wakes inside its commit, past the lease check: it appends and writes its checkpoint
    for record in frozen_cut.records:
        a.writer.add(record)
    try:
        a.writer.flush()
    except FileNotFoundError:
        pass  # the job left processing/: nothing to write to
    assert (done / "output.jsonl").read_bytes() == before
    assert_exactly_once(done, ids)


def test_a_frozen_owner_cannot_finish_a_job_another_daemon_took_over(tmp_path: Path) -> None:
    ids = [f"g{i}" for i in range(40)]
    job, a, ctx_b = _owned_by_a(tmp_path, ids)
    loop = EngineLoop(EchoEngine("tiny-random", delay=0))
    while not a.drained:
        loop.fill([a], 4)
        loop.step()
    for cut in a.full_cuts():
        commit(a, cut)
    b_lease = leases.acquire(job, "b", leases.current(job))  # B takes over while A is frozen before its end
    assert close(a, a.cut(), "completed") is None, "A must not finish the job"
    assert (tmp_path / "processing" / "job").is_dir() and not (tmp_path / "done" / "job").exists()
    assert run_many(ctx_b, EchoEngine("tiny-random", delay=0), [(job, b_lease)])["job"] == "completed"
    assert_exactly_once(tmp_path / "done" / "job", ids)


def test_max_error_ratio_is_judged_on_the_whole_file_before_any_cut(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    lines: list[object] = [chat_line(f"e{i}", "hi") if i % 2 else "not json" for i in range(200)]
    drop_job(spool.inbox, "bad", lines, {"shards": 4, "max_error_ratio": 0.1})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"})
    job = claim(spool, "bad", "n1")
    ctx = make_ctx(spool, Hooks(), config)
    assert start_job(ctx, job, leases.current(job)) == "failed"
    failed = tmp_path / "failed" / "bad"
    assert not (failed / ".spoold" / "shards.json").exists()
    assert len((failed / "errors.jsonl").read_text().splitlines()) == 100  # each bad line listed once


def test_shard_min_lines_cuts_big_jobs_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "small", [chat_line(f"a{i}", "hi") for i in range(50)], {})
    drop_job(spool.inbox, "large", [chat_line(f"b{i}", "hi") for i in range(250)], {})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"}, shard_min_lines=100)
    ctx = make_ctx(spool, Hooks(), config)
    for name, shards in (("small", None), ("large", 2)):
        job = claim(spool, name, "n1")
        started = start_job(ctx, job, leases.current(job))
        assert isinstance(started, ActiveJob)
        plan = load_plan(job)
        assert (plan.count if plan else None) == shards
        started.close_reader()


def test_a_crash_after_a_segment_was_renamed_into_place_resumes_from_the_merged_file(tmp_path: Path) -> None:
    """The end renamed gen 3's segment to output.jsonl, then the daemon died before the job moved; the
    restart resumes from gen 3's last checkpoint (r3 was in the final cut, never checkpointed) as gen 4."""
    state = tmp_path / ".spoold"
    state.mkdir()
    segments.segment_path(tmp_path, state, 3, "output").write_bytes(b"r1\nr2\nr3\n")
    segments.merge(tmp_path, [(state, Checkpoint(gen=3, output_bytes=9))], own=(state, 3))
    resumed = Checkpoint(gen=3, output_bytes=6).carried_to(4)
    segments.segment_path(tmp_path, state, 4, "output").write_bytes(b"r3\n")
    segments.merge(tmp_path, [(state, resumed.model_copy(update={"output_bytes": 3}))], own=(state, 4))
    assert (tmp_path / "output.jsonl").read_bytes() == b"r1\nr2\nr3\n"


# ---- priority: a free shard against the inbox ---------------------------------------------------------


@pytest.mark.parametrize("shard_priority,inbox_priority,first", [(0, 5, "inbox"), (10, 0, "shard")])
def test_a_free_shard_and_an_inbox_job_are_taken_by_priority(tmp_path: Path, shard_priority: int, inbox_priority: int, first: str) -> None:
    import time

    from spoold.daemon.loop import Daemon
    from spoold.fsutil import atomic_write_json
    from spoold.job.shards.plan import ShardPlan, save_plan
    from spoold.job.validate import validate_file
    from spoold.service.facade import Service
    from spoold.service.gpu import GpuMonitor
    from spoold.service.metrics import Metrics
    from spoold.service.notify import Notifier

    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "max_active_jobs": 1}, metrics={"listen": ""},
                    watch={"settle_seconds": 0})  # fmt: skip
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "big", [chat_line(f"s{i}", "hi") for i in range(400)], {"priority": shard_priority})
    job = claim(spool, "big", "elsewhere")  # cut by another daemon, which then died: every shard is free
    atomic_write_json(job.validation, validate_file(job.input, "tiny-random").model_dump())
    save_plan(job, ShardPlan(spans=cut_spans(job.input, 2)))
    drop_job(spool.inbox, "small", [chat_line("x", "hi")], {"priority": inbox_priority})
    service = Service(config, Notifier(None), Metrics(), GpuMonitor(nvml=None, environ={}))
    daemon = Daemon(config, loader=lambda cfg, profile: EchoEngine("tiny-random", delay=0), service=service)
    now = time.time()
    for _ in range(50):
        now += 1
        daemon.tick(now=now)
        if daemon.starting or daemon.active:
            break
    taken = set(daemon.starting) | {j.name for j in daemon.active}
    assert taken == ({"small"} if first == "inbox" else {"big#1"}), taken
    daemon.starter.shutdown(wait=True)
    daemon.io.shutdown(wait=True)
