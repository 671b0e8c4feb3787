"""One engine, many jobs (issue 8), a deep inbox (issue 15), crashes that count only without progress (issue 12).

Pure parts first (intake, ready queue, engine loop), then the engine loop in-process with
crashes, then the real daemon (echo backend) with kill -9, SIGTERM, cancel and priorities.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.engine.base import EngineRequest
from spoold.engine.echo import EchoEngine
from spoold.engine.loop import EngineLoop
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.intake import Intake
from spoold.spool.layout import Spool
from spoold.spool.readiness import ReadinessRule
from spoold.spool.scheduler import Candidate, ReadyQueue

from inline_driver import Crash, Hooks, ShuffledEngine, make_ctx, run_many
from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, drop_job, read_records, wait_for

# ---- pure: intake and ready queue ------------------------------------------------------------


def _intake(tmp_path: Path, settle: float = 1.0, priorities: dict[str, int] | None = None) -> tuple[Spool, Intake]:
    spool = Spool(tmp_path)
    spool.init()
    prio = priorities or {}
    return spool, Intake(spool, ReadinessRule(settle, 300.0, True), lambda name: (prio.get(name, 0), "m"))


def test_intake_decides_at_the_settle_deadline_not_later(tmp_path: Path) -> None:
    spool, intake = _intake(tmp_path, settle=1.0)
    drop_job(spool.inbox, "a", [chat_line("x", "hi")], {})
    intake.touch(["a"], now=100.0)  # the inotify hint
    assert "a" not in intake.ready and intake.next_deadline() == pytest.approx(101.0)
    intake.due(100.9)
    assert "a" not in intake.ready
    intake.due(101.0)
    assert "a" in intake.ready and intake.next_deadline() is None


def test_intake_a_change_restarts_the_settle_time_and_a_vanished_file_is_forgotten(tmp_path: Path) -> None:
    spool, intake = _intake(tmp_path)
    drop_job(spool.inbox, "a", [chat_line("x", "hi")], {})
    intake.touch(["a"], 100.0)
    intake.due(101.0)
    assert "a" in intake.ready
    (spool.inbox / "a.yaml").write_text("priority: 5\n")  # sidecar replaced while waiting
    intake.touch(["a"], 101.5)
    assert "a" not in intake.ready
    intake.due(102.5)
    assert "a" in intake.ready
    (spool.inbox / "a.jsonl").unlink()
    (spool.inbox / "a.yaml").unlink()
    intake.touch(["a"], 103.0)
    assert "a" not in intake.ready and len(intake) == 0


def test_intake_rescan_finds_what_inotify_dropped(tmp_path: Path) -> None:
    spool, intake = _intake(tmp_path, settle=0.5)
    for i in range(50):
        drop_job(spool.inbox, f"j{i}", [chat_line("x", "hi")], {})
    intake.touch(["j1"], 10.0)  # an overflowed queue: only one event arrived
    intake.rescan(10.0)
    intake.due(10.5)
    assert len(intake.ready) == 50


def test_the_watcher_hints_arrivals_and_departures_not_reads_or_each_write(tmp_path: Path) -> None:
    """inotify asks for creates, closes after writing, renames and deletes: a job's upload and claim
    are hinted; the daemon reading an inbox file (a sidecar peek) and each write(2) are not."""
    import threading

    from spoold.spool.watcher import InboxWatcher

    watcher = InboxWatcher(tmp_path, "inotify", threading.Event())
    watcher.start()

    def hints_after(action) -> list[str]:
        action()
        time.sleep(0.3)  # the observer's threads pass events on within their 0.1 s timeouts
        return watcher.changed()

    try:
        (tmp_path / ".a.jsonl.tmp").write_text("x\n")
        assert "a" in hints_after(lambda: os.rename(tmp_path / ".a.jsonl.tmp", tmp_path / "a.jsonl"))  # renamed in
        assert "a" in hints_after(lambda: (tmp_path / "a.yaml").write_text("{}\n"))  # written in place
        assert hints_after(lambda: (tmp_path / "a.yaml").read_text()) == []  # a read (the daemon's peek)
        with open(tmp_path / "b.jsonl", "w") as upload:
            assert "b" in hints_after(upload.flush)  # the upload starts
            assert hints_after(lambda: [upload.write("y\n") or upload.flush() for _ in range(50)]) == []  # each write
        assert "b" in hints_after(lambda: None)  # ... and ends (closed after writing)
        assert "a" in hints_after(lambda: os.rename(tmp_path / "a.jsonl", tmp_path.parent / "claimed-a.jsonl"))  # claimed
        assert "b" in hints_after(lambda: (tmp_path / "b.jsonl").unlink())  # removed
    finally:
        watcher.stop()


def test_ready_queue_priority_then_loaded_model_then_age() -> None:
    q = ReadyQueue()
    q.push(Candidate("old-b", 0, 1.0, "b"))
    q.push(Candidate("new-a", 0, 5.0, "a"))
    q.push(Candidate("urgent", 3, 9.0, "b"))
    assert q.pick("a", 10.0, 600.0).name == "urgent"
    q.discard("urgent")
    assert q.pick("a", 10.0, 600.0).name == "new-a"  # loaded model wins over age
    assert q.pick("a", 1000.0, 600.0).name == "old-b"  # unless the other waited longer than switch_after
    q.push(Candidate("new-a", 0, 5.0, "a"))  # pushed again (changed): the old entry no longer counts
    q.discard("new-a")
    assert q.pick("a", 10.0, 600.0).name == "old-b" and len(q) == 1


def test_engine_loop_routes_by_key_and_drops_one_job_only() -> None:
    class Feeder:
        def __init__(self, name: str, n: int) -> None:
            self.name, self.left, self.exhausted, self.got, self.in_engine = name, list(range(1, n + 1)), False, [], 0

        def next_request(self) -> EngineRequest | None:
            if not self.left:
                self.exhausted = True
                return None
            line = self.left.pop(0)
            self.in_engine += 1
            return EngineRequest(line, f"{self.name}-{line}", "completion", {"prompt": f"{self.name} {line}"})

        def take(self, line: int, result: object) -> None:
            self.in_engine -= 1
            self.got.append((line, result.custom_id))  # type: ignore[attr-defined]

        def dropped(self, count: int) -> None:
            self.in_engine -= count

        def backlogged(self) -> bool:
            return False

    a, b = Feeder("a", 3), Feeder("b", 3)
    loop = EngineLoop(EchoEngine("m", delay=0))
    loop.fill([a, b], window=4)
    assert loop.in_flight() == 4 and a.in_engine == 3 and b.in_engine == 1
    loop.drop(b)
    assert loop.in_flight() == 3 and b.in_engine == 0
    loop.step()
    assert sorted(a.got) == [(1, "a-1"), (2, "a-2"), (3, "a-3")] and b.got == []
    c = Feeder("c", 3)
    c.backlogged = lambda: True  # type: ignore[method-assign]  # its commits lag behind
    loop.fill([c, b], window=4)
    assert c.in_engine == 0 and c.left == [1, 2, 3] and b.in_engine == 2


# ---- the engine loop in-process, crashing -----------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_jobs_side_by_side_with_random_crashes_are_each_exactly_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    spool = Spool(tmp_path)
    spool.init()
    ids = {}
    for j in range(4):
        ids[f"job{j}"] = [f"j{j}-{i}" for i in range(rng.randint(20, 80))]
        lines: list[object] = [chat_line(c, f"words {c}") for c in ids[f"job{j}"]]
        lines.insert(5, "not json")
        drop_job(spool.inbox, f"job{j}", lines, {"chunk_size": rng.choice([1, 4, 9])})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": rng.choice([3, 16]), "max_attempts": 100})
    jobs = [claim(spool, name, "n1") for name in ids]
    for attempt in range(60):
        todo = [j for j in jobs if j is not None and j.path.exists()]  # still in processing/
        if not todo:
            break
        engine = ShuffledEngine(rng, crash_after=rng.randint(2, 10) if attempt < 4 else rng.randint(5, 60))
        pairs = [(j, leases.acquire(j, "n1", leases.current(j))) for j in todo]
        try:
            run_many(make_ctx(spool, Hooks(), config), engine, pairs)
        except Crash:
            for j in todo:
                if j.output.exists():
                    with open(j.output, "ab") as fh:
                        fh.write(b'{"id": "torn", "cus')
    for name, expected in ids.items():
        done = spool.root / "done" / name
        assert_exactly_once(done, [*expected, None])
        assert json.loads((done / "batch.json").read_text())["request_counts"]["failed"] == 1


def test_a_lost_lease_on_one_job_leaves_the_others_running(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.init()
    for name in ("keep", "lose"):
        drop_job(spool.inbox, name, [chat_line(f"{name}{i}", "hi") for i in range(30)], {"chunk_size": 5})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 8}, lease_seconds=0.001)
    keep, lose = claim(spool, "keep", "n1"), claim(spool, "lose", "n1")
    assert keep is not None and lose is not None
    old = leases.current(lose)
    assert leases.acquire(lose, "n2", old) is not None  # n2 decided n1 was dead
    outcomes = run_many(
        make_ctx(spool, Hooks(), config), ShuffledEngine(random.Random(1), None), [(keep, leases.current(keep)), (lose, old)]
    )
    assert outcomes == {"keep": "completed", "lose": "lost"}
    assert_exactly_once(spool.root / "done" / "keep", [f"keep{i}" for i in range(30)])
    assert lose.path.exists() and not (lose.output.exists() and lose.output.stat().st_size)


# ---- the real daemon ----------------------------------------------------------------------------

pytestmark_slow = pytest.mark.slow


def _jobs(d: SpooldProcess, n: int, lines: int, **sidecar: object) -> dict[str, list[str]]:
    ids = {}
    for j in range(n):
        name = f"job{j}"
        ids[name] = [f"{name}-{i}" for i in range(lines)]
        drop_job(d.inbox, name, [chat_line(c, f"hello {c}") for c in ids[name]], {"chunk_size": 10, **sidecar})
    return ids


def _active_now(d: SpooldProcess) -> int:
    """Jobs claimed, validated and started (in the engine's active set) right now."""
    count = 0
    for path in (d.spool / "processing").glob("*/.spoold/job.json"):
        try:
            record = json.loads(path.read_text())
            count += record["status"] == "in_progress" and record["open_attempt"]
        except (OSError, ValueError):
            pass
    return count


@pytestmark_slow
def test_several_jobs_in_flight_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(11)
    # max_attempts high: a kill between a job's first request and its first checkpoint counts against it
    # (by design); this test is about exactly once, not about counting
    with SpooldProcess(tmp_path, engine={"window": 8, "max_attempts": 20}) as d:
        ids = _jobs(d, 5, 300)
        for _ in range(4):
            d.start({"SPOOLD_ECHO_DELAY": "0.02"})
            wait_for(lambda: _active_now(d) >= 1 or len(list((d.spool / "done").iterdir())) == 5, 30, what="jobs running")
            time.sleep(rng.uniform(0.1, 0.8))
            d.kill()
        d.start()
        for name, expected in ids.items():
            job = d.wait_finished(name, timeout=120)
            assert job.parent.name == "done"
            assert_exactly_once(job, expected)


@pytestmark_slow
def test_sigterm_with_several_active_jobs_drains_all_and_exits_0(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, engine={"window": 64}) as d:
        ids = _jobs(d, 4, 40)  # small next to the window: all four are fed at once
        d.start({"SPOOLD_ECHO_DELAY": "0.1", "SPOOLD_ECHO_PER_STEP": "4"})
        wait_for(lambda: _active_now(d) >= 2, 30, what="two jobs in the engine")
        assert d.stop() == 0
        assert d.log().count("it resumes from its checkpoint") >= 2
        claimed = [n for n in ids if (d.spool / "processing" / n).is_dir()]  # claimed on demand: maybe not all yet
        assert len(claimed) >= 2
        for name in claimed:
            record = json.loads((d.spool / "processing" / name / ".spoold" / "job.json").read_text())
            assert record["open_attempt"] is False and record["failures"] == 0
        d.start()
        for name, expected in ids.items():
            assert_exactly_once(d.wait_finished(name, timeout=120), expected)


@pytestmark_slow
def test_cancelling_one_active_job_leaves_the_others_untouched(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, engine={"window": 64}) as d:
        ids = _jobs(d, 3, 40)
        drop_job(d.inbox, "bad", [chat_line("b1", "hi"), "not json", {"custom_id": "b1", "prompt": "dup"}, chat_line("b2", "hi")], {})
        d.start({"SPOOLD_ECHO_DELAY": "0.1", "SPOOLD_ECHO_PER_STEP": "2"})
        wait_for(lambda: _active_now(d) >= 2, 30, what="jobs running")
        assert d.cli("cancel", "job1").returncode == 0
        cancelled = d.wait_finished("job1", timeout=60)
        assert d.batch(cancelled)["status"] == "cancelled"
        for name in ("job0", "job2"):
            job = d.wait_finished(name, timeout=120)
            assert d.batch(job)["status"] == "completed"
            assert_exactly_once(job, ids[name])
        bad = d.wait_finished("bad")
        assert d.batch(bad)["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
        codes = sorted(r["error"]["code"] for r in read_records(bad) if r["error"])
        assert codes == ["duplicate_custom_id", "invalid_json"]


@pytestmark_slow
def test_a_high_priority_job_takes_the_next_free_slot(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, engine={"max_active_jobs": 1, "window": 2}) as d:
        for i in range(4):
            drop_job(d.inbox, f"low{i}", [chat_line(f"l{i}-{k}", "hi") for k in range(40)], {})  # ~1 s each
        d.start({"SPOOLD_ECHO_DELAY": "0.05"})
        wait_for(lambda: _active_now(d) >= 1, 30, what="a job running")
        drop_job(d.inbox, "urgent", [chat_line("u", "hi")], {"priority": 9})
        later, order = _lows_after_urgent(d)
        assert len(later) >= 2, f"urgent should overtake queued jobs: {order}"


def _lows_after_urgent(d: SpooldProcess) -> tuple[list[str], list[str]]:
    """Once `urgent` and low0-3 are done: the low jobs that finished after `urgent`, and the finishing order."""
    for name in ("urgent", *(f"low{i}" for i in range(4))):
        d.wait_finished(name, timeout=60)
    finished = {p.name: json.loads((p / "batch.json").read_text())["spoold"]["updated_at"] for p in (d.spool / "done").iterdir()}
    later = [n for n in finished if n.startswith("low") and finished[n] > finished["urgent"]]
    return later, sorted(finished, key=finished.get)


@pytestmark_slow
def test_a_waiting_job_whose_sidecar_is_replaced_runs_with_the_new_one(tmp_path: Path) -> None:
    """Issue 15: what the intake learned about a waiting upload is refreshed when its sidecar changes."""
    with SpooldProcess(tmp_path, engine={"max_active_jobs": 1, "window": 2}, watch={"settle_seconds": 0.2}) as d:
        drop_job(d.inbox, "busy", [chat_line(f"b{k}", "hi") for k in range(100)], {})  # about 2.5 s
        d.start({"SPOOLD_ECHO_DELAY": "0.05"})
        wait_for(lambda: _active_now(d) >= 1, 30, what="a job running")
        drop_job(d.inbox, "later", [chat_line("x", "hi")], {"metadata": {"v": "old"}})
        time.sleep(0.5)  # settled and waiting for the slot
        assert (d.inbox / "later.jsonl").exists() and not d.job_dir("done", "busy").exists(), "the scenario: later waits"
        (d.inbox / ".later.yaml.tmp").write_text("metadata: {v: new}\npriority: 3\n")
        os.rename(d.inbox / ".later.yaml.tmp", d.inbox / "later.yaml")
        later = d.wait_finished("later", timeout=60)
        assert d.batch(later)["metadata"] == {"v": "new"}


@pytestmark_slow
def test_two_models_queued_switch_once(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, engine={"max_active_jobs": 2}) as d:
        for i in range(6):
            model = "tiny-random" if i % 2 else "tiny-random-b"
            drop_job(d.inbox, f"m{i}", [chat_line(f"m{i}-{k}", "hi") for k in range(20)], {"model": model})
        d.start({"SPOOLD_ECHO_DELAY": "0.01"})
        for i in range(6):
            job = d.wait_finished(f"m{i}", timeout=60)
            assert d.batch(job)["status"] == "completed"
        assert d.log().count("switching model") == 1, d.log()


@pytestmark_slow
def test_a_deep_inbox_every_job_once_in_priority_order(tmp_path: Path) -> None:
    n = 2000
    with SpooldProcess(tmp_path, engine={"max_active_jobs": 1}, watch={"settle_seconds": 0.2}) as d:
        for i in range(n):
            drop_job(d.inbox, f"q{i:04d}", [chat_line(f"q{i}", "hi")], {"priority": i % 3})
        d.start()
        wait_for(lambda: len(list((d.spool / "done").iterdir())) == n, 180, what="every job done")
        order = []
        for job in (d.spool / "done").iterdir():
            assert_exactly_once(job, [f"q{int(job.name[1:])}"])
            claimed_at = json.loads((job / ".spoold" / "job.json").read_text())[
                "claimed_at"
            ]  # jobs end on two I/O lanes: claim order is the order
            order.append((claimed_at, int(job.name[1:]) % 3))
        prios = [p for *_, p in sorted(order)]
        assert prios == sorted(prios, reverse=True), "higher priorities first"


@pytestmark_slow
def test_twenty_kills_of_a_healthy_job_never_fail_it(tmp_path: Path) -> None:
    rng = random.Random(5)
    with SpooldProcess(tmp_path, engine={"window": 8, "max_attempts": 3}) as d:
        ids = [f"k{i}" for i in range(1500)]
        drop_job(d.inbox, "storm", [chat_line(c, "hi") for c in ids], {"chunk_size": 25})
        ckpt = LatestCheckpoint(d.job_dir("processing", "storm") / ".spoold")

        def chunks() -> int:
            try:
                return json.loads(ckpt.read_text())["chunks"]
            except (OSError, ValueError):  # not there yet, or the job has moved on
                return 0

        for _ in range(20):
            before = chunks()
            d.start({"SPOOLD_ECHO_DELAY": "0.005"})
            # every kill comes after this run committed something: such a crash must never count
            wait_for(lambda: chunks() > before or d.job_dir("done", "storm").exists(), 30, what="a checkpoint of this run")
            time.sleep(rng.uniform(0.0, 0.4))
            d.kill()
            if d.job_dir("done", "storm").exists():
                break
        d.start()
        job = d.wait_finished("storm", timeout=120)
        assert job.parent.name == "done", d.batch(job)
        assert_exactly_once(job, ids)


@pytestmark_slow
def test_a_job_that_kills_its_daemon_before_any_progress_fails_after_max_attempts(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, engine={"window": 4, "max_attempts": 3}, chunk_size=100000) as d:
        drop_job(d.inbox, "poison", [chat_line(f"p{i}", "hi") for i in range(50)], {})
        state = d.spool / "processing" / "poison" / ".spoold"
        failed = d.spool / "failed" / "poison" / "batch.json"
        kills = 0
        last_run = None
        for _ in range(6):
            d.start({"SPOOLD_ECHO_DELAY": "5"})  # a step takes 5 s: never a checkpoint before the kill

            def fed() -> bool:  # this run (not the killed one before it) opened its attempt
                record = json.loads((state / "job.json").read_text()) if (state / "job.json").exists() else {}
                return record.get("open_attempt") and record.get("attempt_run") not in (None, last_run)

            wait_for(lambda: failed.exists() or fed(), 30, what="a run under way")
            if failed.exists():
                break
            last_run = json.loads((state / "job.json").read_text())["attempt_run"]
            d.kill()
            kills += 1
        assert failed.exists()
        assert kills == 3  # three runs that committed nothing; a small input's validating pass is not kept, so not progress
        message = d.batch(failed.parent)["errors"]["data"][0]["message"]
        assert "before committing any progress" in message and "max_attempts is 3" in message


@pytestmark_slow
def test_jobs_are_started_ahead_of_a_free_slot_and_an_urgent_one_still_goes_first(tmp_path: Path) -> None:
    """With every slot fed, the next job is claimed and started ahead (its slot is refilled the moment one
    drains); a more urgent job that arrives later is started too and fed before it."""
    with SpooldProcess(tmp_path, engine={"max_active_jobs": 1, "window": 64}) as d:
        for i in range(4):
            drop_job(d.inbox, f"low{i}", [chat_line(f"l{i}-{k}", "hi") for k in range(40)], {})  # ~2 s each
        d.start({"SPOOLD_ECHO_DELAY": "0.05", "SPOOLD_ECHO_PER_STEP": "1"})
        wait_for(lambda: _active_now(d) == 1 and len(os.listdir(d.spool / "processing")) == 2, 30, what="one job fed, one started ahead")
        assert len(os.listdir(d.inbox)) == 4  # the other two wait in the inbox: no more than one job ahead
        drop_job(d.inbox, "urgent", [chat_line("u", "hi")], {"priority": 9})
        later, order = _lows_after_urgent(d)
        assert len(later) == 3, f"urgent should be fed right after the job running when it came: {order}"
        assert d.stop() == 0
