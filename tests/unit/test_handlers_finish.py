"""The seam with the core: the core's finish_job with the dispatcher wired into its hooks, as the daemon should."""

from __future__ import annotations

import time
from pathlib import Path

from spoold.job.finish import FinishHooks, JobEnd, finish_job
from spoold.service.handler_runs import HandlerDispatcher
from spoold.spool.jobdir import JobDir, JobRecord

from handler_helpers import RecordingHandler, handler_config, read_batch, read_runs


def processing_job(spool: Path, name: str) -> tuple[JobDir, JobRecord]:
    for sub in ("inbox", "processing", "done", "failed"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    job = JobDir(spool / "processing" / name)
    job.state.mkdir(parents=True)
    job.input.write_text('{"prompt": "x"}\n')
    job.output.write_text('{"custom_id": "line-1", "response": {"status_code": 200, "body": {}}, "error": null}\n')
    record = JobRecord.new(name, name, "test-node", time.time())
    job.save_record(record)
    return job, record


def wire(hooks: FinishHooks, dispatcher: HandlerDispatcher) -> None:
    """Exactly the wiring proposed for spoold.service.facade.Service.wire_finish."""
    hooks.before_move.append(lambda job, batch, selected: dispatcher.plan_runs(job.path, batch, selected))
    hooks.after_move.append(lambda job, batch, selected: dispatcher.job_finished(job.path, batch, selected))


def finish(spool: Path, job: JobDir, record: JobRecord, hooks: FinishHooks) -> tuple[JobDir, dict]:
    return finish_job(
        spool, job, record, JobEnd("completed"), node="test-node", model="tiny-random", metadata={},
        handlers=None, checkpoint=None, validation=None, chunk_size=None, hooks=hooks,
    )  # fmt: skip


def test_finish_job_runs_the_handlers_once(tmp_path: Path) -> None:
    RecordingHandler.events = []
    rec = handler_config(name="rec", type="python", **{"class": "handler_helpers:RecordingHandler"})
    dispatcher = HandlerDispatcher([rec], "test-node")
    dispatcher.start()
    try:
        hooks = FinishHooks()
        wire(hooks, dispatcher)
        job, record = processing_job(tmp_path, "job1")
        final, batch = finish(tmp_path, job, record, hooks)
        assert dispatcher.drain(10)
    finally:
        dispatcher.stop(5)
    assert final.path == tmp_path / "done" / "job1"
    assert [e.job_dir for e in RecordingHandler.events] == [final.path]
    assert read_batch(final.path)["spoold"]["handlers"]["rec"]["status"] == "ok"
    assert read_batch(final.path)["status"] == "completed"


def test_a_crash_right_after_the_rename_loses_nothing(tmp_path: Path) -> None:
    RecordingHandler.events = []
    rec = handler_config(name="rec", type="python", **{"class": "handler_helpers:RecordingHandler"})
    dying = HandlerDispatcher([rec], "test-node")  # never started: the daemon dies before job_finished
    hooks = FinishHooks()
    hooks.before_move.append(lambda job, batch, selected: dying.plan_runs(job.path, batch, selected))
    job, record = processing_job(tmp_path, "job1")
    final, _ = finish(tmp_path, job, record, hooks)
    assert read_runs(final.path)["runs"]["rec"]["status"] == "pending"

    restarted = HandlerDispatcher([rec], "test-node")
    restarted.start()
    try:
        assert restarted.resume(tmp_path) == 1
        assert restarted.drain(10)
    finally:
        restarted.stop(5)
    assert len(RecordingHandler.events) == 1
