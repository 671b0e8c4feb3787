"""The engine loop in-process (tests/inline_driver.py) with an engine that finishes requests out of order and dies at random:
after any crash (with a torn tail appended), a resume yields exactly one record per line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.engine.base import Engine, EngineRequest, EngineResult
from spoold.job.checkpoint import load_checkpoint
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool

from inline_driver import Crash, Hooks, ShuffledEngine, make_ctx, run_inline
from spoold_helpers import assert_exactly_once, chat_line, drop_job


@pytest.mark.parametrize("seed", range(6))
def test_random_crashes_and_torn_tails_still_exactly_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"c{i}" for i in range(120)]
    lines: list[object] = [chat_line(c, f"words for {c}") for c in ids]
    lines.insert(17, "not json")
    lines.insert(50, "")
    drop_job(spool.inbox, "job", lines, {"chunk_size": rng.choice([1, 3, 7, 25])})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": rng.choice([1, 4, 16]), "max_attempts": 100})
    job = claim(spool, "job", "n1")
    assert job is not None
    crashes = barren = 0
    for attempt in range(50):
        lease = leases.acquire(job, "n1", leases.current(job))
        assert lease is not None
        engine = ShuffledEngine(rng, crash_after=rng.randint(2, 8) if attempt < 3 else rng.randint(1, 40))
        before = _progress(job)
        try:
            outcome = run_inline(make_ctx(spool, Hooks(), config), engine, job, lease)
        except Crash:
            crashes += 1
            barren += _progress(job) == before  # only a crash without progress counts against the job
            with open(job.output, "ab") as fh:  # a record half written when the power went
                fh.write(b'{"id": "torn", "custom_id": "c0", "resp')
            continue
        assert outcome == "completed"
        break
    else:
        pytest.fail("never finished")
    assert crashes >= 1
    done = spool.root / "done" / "job"
    assert_exactly_once(done, [*ids, None])  # the bad line's record has no custom_id
    batch = json.loads((done / "batch.json").read_text())
    assert batch["request_counts"] == {"total": 121, "completed": 120, "failed": 1}
    assert batch["spoold"]["attempts"]["failures"] == barren < crashes


def _progress(job: JobDir) -> tuple[int, bool]:
    return load_checkpoint(job.state).chunks, job.validation.exists()


def test_graceful_stop_then_resume(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"g{i}" for i in range(60)]
    drop_job(spool.inbox, "job", [chat_line(c, "hi") for c in ids], {"chunk_size": 5})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 8})
    job = claim(spool, "job", "n1")
    assert job is not None
    hooks = Hooks()
    engine = ShuffledEngine(random.Random(3), None)
    calls = {"n": 0}
    original = engine.step

    def step_then_stop() -> list[EngineResult]:
        calls["n"] += 1
        if calls["n"] == 6:
            hooks.stop = True
        return original()

    engine.step = step_then_stop  # type: ignore[method-assign]
    outcome = run_inline(make_ctx(spool, hooks, config), engine, job, leases.current(job))
    assert outcome == "stopped"
    record = job.load_record()
    assert record.open_attempt is False and record.failures == 0
    outcome = run_inline(
        make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(4), None), job, leases.acquire(job, "n1", leases.current(job))
    )
    assert outcome == "completed"
    assert_exactly_once(spool.root / "done" / "job", ids)


def test_engine_failures_retry_then_fail_the_job(tmp_path: Path) -> None:
    from spoold.engine.base import EngineFailure

    class Broken(ShuffledEngine):
        def step(self) -> list[EngineResult]:
            raise EngineFailure("CUDA error: device-side assert")

    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line("a", "hi")], {})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "max_attempts": 2})
    job = claim(spool, "job", "n1")
    assert job is not None
    ctx, broken = make_ctx(spool, Hooks(), config), Broken(random.Random(0), None)
    assert run_inline(ctx, broken, job, leases.current(job)) == "retry"
    assert job.load_record().retry_after > 0
    assert run_inline(ctx, broken, job, leases.acquire(job, "n1", leases.current(job))) == "failed"
    failed = json.loads((spool.root / "failed" / "job" / "batch.json").read_text())
    assert "CUDA error" in failed["errors"]["data"][0]["message"] and "2 attempts" in failed["errors"]["data"][0]["message"]


def test_lease_taken_over_stops_the_old_owner(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line(f"x{i}", "hi") for i in range(50)], {"chunk_size": 5})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 2}, lease_seconds=0.001)
    job = claim(spool, "job", "n1")
    assert job is not None
    old = leases.current(job)
    assert leases.acquire(job, "n2", old) is not None  # n2 decided n1 was dead
    outcome = run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(0), None), job, old)
    assert outcome == "lost"
    assert job.path.exists() and not (job.output.exists() and job.output.stat().st_size)


def _claimed(tmp_path: Path, lines: list[object], sidecar: dict) -> tuple[Spool, JobDir]:
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", lines, sidecar)
    job = claim(spool, "job", "n1")
    assert job is not None
    return spool, job


def test_engine_dying_on_add_never_skips_a_line(tmp_path: Path) -> None:
    from spoold.engine.base import EngineFailure

    class DiesOnFirstAdd(ShuffledEngine):
        def add(self, request: EngineRequest) -> EngineResult | None:
            raise EngineFailure("engine core died while idle")

    ids = [f"a{i}" for i in range(10)]
    spool, job = _claimed(tmp_path, [chat_line(c, "hi") for c in ids], {"chunk_size": 3})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "max_attempts": 5})
    outcome = run_inline(make_ctx(spool, Hooks(), config), DiesOnFirstAdd(random.Random(0), None), job, leases.current(job))
    assert outcome == "retry"
    lease = leases.acquire(job, "n1", leases.current(job))
    outcome = run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(1), None), job, lease)
    assert outcome == "completed"
    assert_exactly_once(spool.root / "done" / "job", ids)


def test_ending_without_running_cuts_uncommitted_records(tmp_path: Path) -> None:
    """kill -9 between an append and its checkpoint, then a cancel: the unsaved tail is not kept."""
    ids = [f"b{i}" for i in range(40)]
    spool, job = _claimed(tmp_path, [chat_line(c, "hi") for c in ids], {"chunk_size": 5})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 4, "max_attempts": 9})
    with pytest.raises(Crash):
        run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(2), crash_after=6), job, leases.current(job))
    with open(job.output, "ab") as fh:
        fh.write(b'{"id": "appended-but-never-checkpointed", "custom_id": "b39"}\n{"torn')
    job.cancel_marker.touch()
    lease = leases.acquire(job, "n1", leases.current(job))
    assert run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(3), None), job, lease) == "cancelled"
    done = spool.root / "done" / "job"
    records = [json.loads(line) for line in (done / "output.jsonl").read_text().split("\n") if line]
    batch = json.loads((done / "batch.json").read_text())
    assert batch["status"] == "cancelled" and len(records) == batch["request_counts"]["completed"]
    assert all(r["id"].startswith("batch_req_") for r in records)


def test_finished_but_not_moved_is_moved_without_an_engine(tmp_path: Path) -> None:
    from spoold.job.finish import FinishHooks

    ids = [f"c{i}" for i in range(12)]
    spool, job = _claimed(tmp_path, [chat_line(c, "hi") for c in ids], {"chunk_size": 4})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"})
    ctx = make_ctx(spool, Hooks(), config)

    def crash_before_rename(*args: object) -> None:
        raise Crash()

    ctx.finish_hooks = FinishHooks(before_move=[crash_before_rename])
    with pytest.raises(Crash):
        run_inline(ctx, ShuffledEngine(random.Random(4), None), job, leases.current(job))
    assert job.load_record().status == "completed" and job.path.exists()

    def no_engine(cfg: Config, profile: object) -> Engine:
        raise AssertionError("a finished job must not load a model again")

    class NoEngine(ShuffledEngine):
        def add(self, request: EngineRequest) -> EngineResult | None:
            raise AssertionError("a finished job must not be fed to an engine again")

    lease = leases.acquire(job, "n1", leases.current(job))
    assert run_inline(make_ctx(spool, Hooks(), config), NoEngine(random.Random(0), None), job, lease) == "completed"
    assert_exactly_once(spool.root / "done" / "job", ids)
    assert json.loads((spool.root / "done" / "job" / "batch.json").read_text())["request_counts"]["completed"] == 12


def test_unreadable_input_fails_with_one_sentence(tmp_path: Path) -> None:
    spool, job = _claimed(tmp_path, [chat_line("a", "hi")], {})
    job.input.unlink()
    job.input.mkdir()  # root reads any file, so a directory stands in for an unreadable input
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"})
    outcome = run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(0), None), job, leases.current(job))
    assert outcome == "failed"
    message = json.loads((spool.root / "failed" / "job" / "batch.json").read_text())["errors"]["data"][0]["message"]
    assert message.startswith("cannot read the input file") and "\n" not in message


def test_pending_failure_survives_a_crash(tmp_path: Path) -> None:
    spool, job = _claimed(tmp_path, [chat_line("a", "hi")], {})
    record = job.load_record()
    record.pending_failure = "no sidecar job.yaml arrived within 300 s"
    record.open_attempt = True
    job.save_record(record)
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"})
    outcome = run_inline(make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(0), None), job, leases.current(job))
    assert outcome == "failed"
    assert "no sidecar" in json.loads((spool.root / "failed" / "job" / "batch.json").read_text())["errors"]["data"][0]["message"]
