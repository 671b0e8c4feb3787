"""The pending-handler-runs index: written before the final rename, read instead of every finished job, rebuilt if lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import spoold.handlers.records as records_module
from spoold.handlers import pending
from spoold.service.handler_runs import HandlerDispatcher, plan_runs

from handler_helpers import RecordingHandler, handler_config, make_dispatcher, make_job  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def _clean() -> None:
    RecordingHandler.events = []


def recorder(name: str = "rec", **settings: object) -> object:
    return handler_config(name=name, type="python", **{"class": "handler_helpers:RecordingHandler"}, settings=settings)


def markers(spool: Path) -> dict[str, dict]:
    folder = pending.index_dir(spool)
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.exists() else {}


def finish(spool: Path, name: str, configs: list, node: str = "test-node", final: str | None = None) -> Path:
    """As the core does it: plan in processing/, then one rename (to `final`, e.g. NAME.2 when NAME is taken)."""
    job_dir, batch = make_job(spool, name, folder="processing")
    plan_runs(job_dir, batch, None, configs, node=node)
    target = spool / "done" / (final or name)
    os.rename(job_dir, target)
    return target


def history(spool: Path, count: int) -> None:
    """Finished jobs whose runs all ended long ago, as months of operation leave them."""
    for i in range(count):
        job_dir, batch = make_job(spool, f"old{i:04d}")
        runs = plan_runs(job_dir, batch, None, [], node="test-node")
        assert not runs.runs


def test_marker_is_written_before_the_final_rename_and_removed_when_the_runs_end(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, batch = make_job(tmp_path, "job1", folder="processing")
    plan_runs(job_dir, batch, None, [rec], node="test-node")
    assert markers(tmp_path) == {"batch_job1": {"batch_id": "batch_job1", "node": "test-node", "state": "processing", "name": "job1"}}
    final = tmp_path / "done" / "job1"
    os.rename(job_dir, final)
    dispatcher = make_dispatcher([recorder(fail_times=1)])
    dispatcher.job_finished(final, batch, None)
    assert dispatcher.drain(10)
    assert [e.attempt for e in RecordingHandler.events] == [1, 2]  # a retry kept the marker until the end
    assert markers(tmp_path) == {}


def test_a_job_with_no_runs_gets_no_marker(tmp_path: Path) -> None:
    history(tmp_path, 3)
    assert markers(tmp_path) == {}


def test_resume_reads_the_index_not_every_finished_job(tmp_path: Path, make_dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = recorder()
    history(tmp_path, 300)
    finish(tmp_path, "pending1", [rec])
    dispatcher = make_dispatcher([rec])
    assert dispatcher.resume(tmp_path) == 1  # the first search completes the index (one full scan)
    assert dispatcher.drain(10)
    assert pending.is_complete(tmp_path)

    finish(tmp_path, "pending2", [rec])
    reads: list[str] = []
    real = records_module.load_runs
    monkeypatch.setattr(records_module, "load_runs", lambda job_dir: reads.append(Path(job_dir).name) or real(job_dir))
    again = make_dispatcher([rec])  # a restart
    assert again.resume(tmp_path) == 1
    assert again.drain(10)
    assert reads == ["pending2"]  # 300 finished jobs in done/, none of them read
    assert [e.job for e in RecordingHandler.events] == ["pending1", "pending2"]


def test_lost_index_is_rebuilt_by_one_full_scan(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    history(tmp_path, 20)
    for name in ("a", "b", "c"):
        finish(tmp_path, name, [rec])
    finish(tmp_path, "theirs", [rec], node="other-node")
    before = markers(tmp_path)
    assert sorted(before) == ["batch_a", "batch_b", "batch_c", "batch_theirs"]
    shutil.rmtree(pending.index_dir(tmp_path))  # lost (deleted by hand, restored from a backup without it, ...)

    dispatcher = HandlerDispatcher([rec], "test-node")  # not started yet: no run may end before the index is checked
    assert dispatcher.resume(tmp_path) == 3
    # Rebuilt with every job's marker, other nodes' too, each now pointing at done/.
    rebuilt = markers(tmp_path)
    assert sorted(rebuilt) == sorted(before)
    assert all(m["state"] == "done" for m in rebuilt.values())
    assert pending.is_complete(tmp_path)
    dispatcher.start()
    try:
        assert dispatcher.drain(10)
    finally:
        dispatcher.stop(timeout=5)
    assert sorted(e.job for e in RecordingHandler.events) == ["a", "b", "c"]
    assert sorted(markers(tmp_path)) == ["batch_theirs"]  # ours ended; the other node's wait for it
    assert make_dispatcher([rec]).resume(tmp_path) == 0  # nothing delivered twice


def test_crash_between_the_rename_and_the_marker_update_is_found_under_its_new_name(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    history(tmp_path, 1)
    make_dispatcher([rec]).resume(tmp_path)  # index complete
    (tmp_path / "done" / "job1").mkdir()  # the name was taken, so the job became job1.2
    final = finish(tmp_path, "job1", [rec], final="job1.2")
    assert markers(tmp_path)["batch_job1"]["state"] == "processing"  # the daemon died before rewriting it
    dispatcher = make_dispatcher([rec])
    assert dispatcher.resume(tmp_path) == 1
    assert dispatcher.drain(10)
    assert [e.job_dir for e in RecordingHandler.events] == [final]


def test_markers_of_jobs_still_processing_are_kept_and_of_vanished_jobs_dropped(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    history(tmp_path, 1)
    make_dispatcher([rec]).resume(tmp_path)
    job_dir, batch = make_job(tmp_path, "running", folder="processing")
    plan_runs(job_dir, batch, None, [rec], node="test-node")  # planned; the rename has not happened yet
    gone = finish(tmp_path, "requeued", [rec])
    dispatcher = make_dispatcher([rec])
    shutil.rmtree(gone)  # requeued (or removed by hand) before its runs happened
    assert dispatcher.resume(tmp_path) == 0
    assert sorted(markers(tmp_path)) == ["batch_running"]
    os.rename(job_dir, tmp_path / "done" / "running")
    assert dispatcher.resume(tmp_path) == 1
    assert dispatcher.drain(10)
    assert markers(tmp_path) == {}


def test_the_daemon_finds_runs_planned_by_spoold_cancel_via_the_index(tmp_path: Path) -> None:
    """`spoold cancel` of a queued job plans its runs; the daemon's rescan finds them through the index."""
    from spoold.control.cancel import cancel
    from spoold.spool.layout import Spool

    spool = Spool(tmp_path)
    spool.init()
    (spool.inbox / "q.jsonl").write_text('{"prompt": "x"}\n')
    (spool.inbox / "q.yaml").write_text("{}\n")
    cancel(spool, "q", "test-node", [recorder()])
    found = [(p.name, runs.status) for p, runs in pending.pending_jobs(tmp_path, "test-node")]
    assert found == [("q", "cancelled")]
