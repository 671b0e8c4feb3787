"""Retention: only expired jobs go, never one with pending handler runs, crash-safe, once per job across daemons."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spoold.config import RetentionConfig
from spoold.retention.lock import SpoolLock
from spoold.retention.prune import PeriodicPrune, PruneBusy, prune, trash_dir
from spoold.retention.rules import ended_at, is_due
from spoold.service.handler_runs import plan_runs

from handler_helpers import handler_config, make_job
from spoold_helpers import SpooldProcess, child_env, wait_for

DAY = 86400.0
FILES = ("input.jsonl", "meta.yaml", "output.jsonl", "errors.jsonl", "batch.json")


def finished(spool: Path, name: str, age_days: float, status: str = "completed", bulk: int = 0) -> Path:
    """A finished job that ended `age_days` ago (batch.json and the directory's mtime say so)."""
    job_dir, batch = make_job(spool, name, status)
    when = time.time() - age_days * DAY
    batch[f"{status}_at"] = when
    (job_dir / "batch.json").write_text(json.dumps(batch))
    for i in range(bulk):  # a bigger job, so a prune takes long enough to be killed half-way
        (job_dir / ".spoold" / f"chunk-{i}").write_bytes(os.urandom(2048))
    os.utime(job_dir, (when, when))
    return job_dir


def complete(job_dir: Path) -> bool:
    return all((job_dir / f).is_file() for f in FILES) and (job_dir / ".spoold").is_dir()


def write_config(path: Path, spool: Path, **retention: object) -> Path:
    path.write_text(yaml.safe_dump({"spool_dir": str(spool), "node_id": path.stem, "retention": retention}))
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "spoold", *args, "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())


# ---- pure rules --------------------------------------------------------------------------------


def test_end_time_and_due_rule() -> None:
    assert ended_at({"completed_at": 100, "failed_at": None}) == 100.0
    assert ended_at({"cancelled_at": 5, "completed_at": 7}) == 7.0
    assert ended_at({"completed_at": True}) is None and ended_at({}) is None
    assert is_due(0.0, 10.0, 10.0) and not is_due(0.0, 9.9, 10.0)
    assert not is_due(0.0, 1e12, None)  # null keeps forever


# ---- what is removed ---------------------------------------------------------------------------


def test_prune_removes_only_expired_jobs_per_state(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    old_done, young_done = finished(spool, "old-done", 8), finished(spool, "young-done", 6)
    old_failed = finished(spool, "old-failed", 2, status="failed")
    young_failed = finished(spool, "young-failed", 0.5, status="failed")
    cancelled = finished(spool, "old-cancelled", 9, status="cancelled")
    retention = RetentionConfig(done=7 * DAY, failed=1 * DAY)

    dry = prune(spool, retention, "n1", dry_run=True)
    assert sorted(r.due.name for r in dry.removed) == ["old-cancelled", "old-done", "old-failed"]
    assert old_done.exists() and old_failed.exists() and cancelled.exists()  # a dry run changes nothing

    report = prune(spool, retention, "n1")
    assert sorted(r.due.name for r in report.removed) == ["old-cancelled", "old-done", "old-failed"]
    assert not old_done.exists() and not old_failed.exists() and not cancelled.exists()
    assert complete(young_done) and complete(young_failed)
    assert os.listdir(trash_dir(spool)) == []
    assert prune(spool, retention, "n1").removed == []  # nothing left to do

    assert prune(spool, RetentionConfig(), "n1").removed == []  # null: keep forever


def test_a_directory_changed_recently_is_not_due_even_if_batch_json_is_old(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    job = finished(spool, "touched", 30)
    os.utime(job, None)  # e.g. a handler result arrived today
    assert prune(spool, RetentionConfig(done=DAY), "n1").removed == []
    assert complete(job)


def test_jobs_with_pending_handler_runs_are_kept_until_they_end(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    job = finished(spool, "owes-a-webhook", 10)
    batch = json.loads((job / "batch.json").read_text())
    hook = handler_config(name="hook", type="webhook", url="http://127.0.0.1:9/x")
    runs = plan_runs(job, batch, None, [hook], node="n1")
    os.utime(job, (time.time() - 10 * DAY,) * 2)
    retention = RetentionConfig(done=DAY)

    report = prune(spool, retention, "n1")
    assert report.removed == [] and [d.name for d in report.kept_pending] == ["owes-a-webhook"]
    assert complete(job)

    runs.runs["hook"].status = "failed"  # the run ended (retries given up)
    (job / ".spoold" / "handlers.json").write_text(runs.model_dump_json())
    os.utime(job, (time.time() - 10 * DAY,) * 2)
    assert [r.due.name for r in prune(spool, retention, "n1").removed] == ["owes-a-webhook"]


def test_archive_moves_whole_jobs_and_a_cross_device_copy_is_resumed_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, archive = tmp_path / "spool", tmp_path / "archive"
    finished(spool, "a", 10)
    finished(spool, "b", 10, status="failed")
    finished(spool, "c", 10)
    retention = RetentionConfig(done=DAY, failed=DAY, archive_dir=archive)
    report = prune(spool, retention, "n1")
    assert sorted(str(r.archived_to.relative_to(archive)) for r in report.removed if r.archived_to) == ["done/a", "done/c", "failed/b"]
    assert all(complete(archive / p) for p in ("done/a", "done/c", "failed/b"))

    # Another filesystem (rename says EXDEV): copied, then renamed in; a crash
    # after the copy is placed but before the trash entry is gone archives nothing twice.
    finished(spool, "a", 10)  # a new job of the same name
    import spoold.retention.prune as prune_module
    import spoold.spool.states as states_module

    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if str(src).startswith(str(spool)) and str(dst).startswith(str(archive)):
            raise OSError(18, "Invalid cross-device link")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(states_module.os, "rename", rename)
    real_rmtree = prune_module.shutil.rmtree
    calls = {"n": 0}

    def crash_once(path: object, *args: object, **kw: object) -> None:
        if ".spoold/trash" in str(path) and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt  # stands in for kill -9 right after the archive copy was placed
        real_rmtree(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(prune_module.shutil, "rmtree", crash_once)
    with pytest.raises(KeyboardInterrupt):
        prune(spool, retention, "n1")
    assert calls["n"] == 1 and os.listdir(trash_dir(spool))  # the copy is placed, the trash entry is not gone yet
    assert not (spool / "done" / "a").exists() and complete(archive / "done" / "a.2")
    again = prune(spool, retention, "n1")
    assert again.recovered == 1
    assert sorted(os.listdir(archive / "done")) == ["a", "a.2", "c"]  # not a.3: archived once
    assert os.listdir(trash_dir(spool)) == []


def test_one_pass_at_a_time_per_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    finished(spool, "old", 10)
    holder = SpoolLock(spool, "prune", "other-host")
    assert holder.acquire()
    try:
        with pytest.raises(PruneBusy, match="other-host"):
            prune(spool, RetentionConfig(done=DAY), "n1")
        assert (spool / "done" / "old").exists()
        assert not SpoolLock(spool, "prune", "third").acquire()
    finally:
        holder.release()
    assert [r.due.name for r in prune(spool, RetentionConfig(done=DAY), "n1").removed] == ["old"]


def test_a_stale_lock_is_taken_over_by_exactly_one(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dead = SpoolLock(spool, "prune", "dead", stale_seconds=0.2)
    assert dead.acquire()
    dead._done.set()  # its holder died: no more renewals
    time.sleep(0.3)
    contenders = [SpoolLock(spool, "prune", f"n{i}", stale_seconds=0.2) for i in range(5)]
    won = [c for c in contenders if c.acquire()]
    assert len(won) == 1 and not dead.held
    won[0].release()


# ---- processes: kill -9 mid-prune, two at once, the daemon's periodic pass ---------------------------


@pytest.mark.parametrize("archive", [False, True], ids=["delete", "archive"])
def test_kill_9_in_the_middle_of_a_prune_leaves_nothing_half_removed(tmp_path: Path, archive: bool) -> None:
    spool = tmp_path / "spool"
    names = [f"job{i:03d}" for i in range(300)]
    for name in names:
        finished(spool, name, 10, bulk=0 if archive else 40)  # an archive on the same filesystem is one rename: fast
    keep = finished(spool, "young", 0.1)
    archive_dir = tmp_path / "archive"
    more = {"archive_dir": str(archive_dir)} if archive else {}
    config = write_config(tmp_path / "node-a.yaml", spool, done="1d", **more)
    rng = random.Random(12)
    killed_mid_pass = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoold", "prune", "--config", str(config)],
            stdout=subprocess.PIPE, text=True, env=child_env(), start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is removing jobs now
        time.sleep(rng.uniform(0.0, 0.02))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not first.startswith("removed"):
            break  # it finished before the kill
        killed_mid_pass += len(os.listdir(spool / "done")) > 1
        # What readers see: every job in done/ is whole; status lists no job that is half there.
        for job in os.listdir(spool / "done"):
            assert complete(spool / "done" / job), job
        status = cli(config, "status", "--all", "--json")
        assert status.returncode == 0, status.stderr
        for row in json.loads(status.stdout):
            assert row["status"] == "completed" and row["total"] == 3, row
        for path in (spool / ".spoold" / "locks").glob("prune.*.json"):  # the dead pass's lock, gone stale
            path.write_text(json.dumps({"node": "dead", "pid": 0, "renewed_at": 0}))
    assert killed_mid_pass >= 1
    final = cli(config, "prune")
    assert final.returncode == 0, final.stderr
    assert os.listdir(spool / "done") == ["young"] and complete(keep)
    assert os.listdir(trash_dir(spool)) == []
    if archive:
        archived = sorted(os.listdir(archive_dir / "done"))
        assert archived == names  # each exactly once, none as NAME.2, and none half there
        assert all(complete(archive_dir / "done" / n) for n in archived)


def test_two_prune_processes_remove_each_job_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    names = {f"job{i:03d}" for i in range(150)}
    for name in names:
        finished(spool, name, 10)
    archive = tmp_path / "archive"
    configs = [write_config(tmp_path / f"node-{x}.yaml", spool, done="1d", archive_dir=str(archive)) for x in "ab"]
    cmds = [[sys.executable, "-m", "spoold", "prune", "--config", str(c)] for c in configs]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()) for cmd in cmds]
    outputs = [p.communicate(timeout=120) for p in procs]
    removed = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("removed done/")]
    assert sorted(removed) == sorted(f"done/{n}" for n in names)  # every one, none twice
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 or "another prune pass is running" in err, err
    assert sorted(os.listdir(archive / "done")) == sorted(names)
    assert os.listdir(spool / "done") == []


def test_two_daemons_prune_one_spool_each_job_once_and_count_it(tmp_path: Path) -> None:
    names = {f"old{i:02d}" for i in range(40)}
    archive = tmp_path / "archive"
    settings = {"retention": {"done": "1d", "failed": "1d", "archive_dir": str(archive)}, "metrics": {"listen": "127.0.0.1:0"}}
    with SpooldProcess(tmp_path / "a", **settings) as a, SpooldProcess(tmp_path / "b", **{**settings, "node_id": "node-b"}) as b:
        b.config_path.write_text(yaml.safe_dump({**b.config, "spool_dir": str(a.spool)}))
        for name in names:
            finished(a.spool, name, 5)
        young = finished(a.spool, "young", 0.2)
        a.start()
        b.start()
        wait_for(lambda: not (set(os.listdir(a.spool / "done")) & names), timeout=60, what="both daemons to prune")
        logs = a.log() + b.log()
        for name in names:
            assert logs.count(f"pruned done/{name} ") == 1, name
        assert sorted(os.listdir(archive / "done")) == sorted(names)
        assert complete(young)
        assert a.stop() == 0 and b.stop() == 0


def test_the_daemons_pass_counts_pruned_jobs_in_metrics(tmp_path: Path) -> None:
    from spoold.service.metrics import Metrics

    spool = tmp_path / "spool"
    finished(spool, "d1", 3)
    finished(spool, "f1", 3, status="failed")
    finished(spool, "f2", 3, status="failed")
    metrics = Metrics()
    pruner = PeriodicPrune("n1", on_removed=lambda removed: metrics.pruned(removed.due.state))
    retention = RetentionConfig(done=DAY, failed=DAY)
    assert pruner.maybe_start(spool, retention, now=1000.0)
    assert not pruner.maybe_start(spool, retention, now=1001.0)  # not due again yet
    wait_for(lambda: not os.listdir(spool / "failed") and not os.listdir(spool / "done"), timeout=20, what="the pass")
    pruner.stop()
    text = metrics.render().decode()
    assert 'spoold_pruned_jobs_total{state="done"} 1.0' in text
    assert 'spoold_pruned_jobs_total{state="failed"} 2.0' in text
    assert not PeriodicPrune("n1").maybe_start(spool, RetentionConfig(), now=0.0)  # retention off: no pass


def test_cli_prune_messages(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    finished(spool, "old", 10)
    off = write_config(tmp_path / "off.yaml", spool)
    result = cli(off, "prune")
    assert result.returncode == 0 and "nothing to prune" in result.stdout
    on = write_config(tmp_path / "on.yaml", spool, done="7d")
    dry = cli(on, "prune", "--dry-run")
    assert dry.returncode == 0 and "would remove done/old" in dry.stdout and (spool / "done" / "old").exists()
    bad = write_config(tmp_path / "bad.yaml", spool, done="a week")
    result = cli(bad, "prune")
    assert result.returncode == 2 and "retention.done" in result.stderr and "Traceback" not in result.stderr
    missing = write_config(tmp_path / "missing.yaml", tmp_path / "nowhere", done="7d")
    result = cli(missing, "prune")
    assert result.returncode == 2 and "spoold init" in result.stderr
