"""Handler runs survive restarts, run once whatever the call order, and never touch the job's results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from spoold.service.handler_runs import HandlerDispatcher, plan_runs

from handler_helpers import (  # noqa: F401 (make_dispatcher is a fixture)
    RecordingHandler,
    WebhookServer,
    file_digests,
    handler_config,
    make_dispatcher,
    make_job,
    read_batch,
    read_runs,
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    RecordingHandler.events = []


def recorder(name: str = "rec", **settings: object) -> object:
    return handler_config(name=name, type="python", **{"class": "handler_helpers:RecordingHandler"}, settings=settings)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def finish_like_the_core(spool: Path, name: str, configs: list, node: str = "test-node") -> tuple[Path, dict]:
    """Plan in processing/, then rename into done/, as the daemon does; job_finished is not called."""
    job_dir, batch = make_job(spool, name, folder="processing")
    plan_runs(job_dir, batch, None, configs, node=node)
    final = spool / "done" / name
    os.rename(job_dir, final)
    return final, batch


def test_restart_with_receiver_down_then_up_delivers_exactly_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    server = WebhookServer().start()
    port = server.port
    server.stop()  # the receiver is down while the first daemon runs
    hook = handler_config(
        name="hook",
        type="webhook",
        url=server.url,
        timeout=2,
        retry={"initial_backoff": 0.05, "max_backoff": 0.05, "jitter": 0.0, "max_attempts": 1000},
    )
    job_dir, batch = finish_like_the_core(spool, "job1", [hook])

    first = HandlerDispatcher([hook], "test-node")
    first.start()
    assert first.resume(spool) == 1
    wait_for(lambda: read_runs(job_dir)["runs"]["hook"]["attempts"] >= 2)
    assert first.stop(timeout=5)
    on_disk = read_runs(job_dir)["runs"]["hook"]
    assert on_disk["status"] in ("pending", "retrying") and on_disk["delivered_at"] is None

    server = WebhookServer(port=port).start()
    try:
        second = HandlerDispatcher([hook], "test-node")
        second.start()
        assert second.resume(spool) == 1
        assert second.drain(10)
        assert second.stop(timeout=5)
        assert len(server.received) == 1
        keys = {r.headers["Idempotency-Key"] for r in server.received}
        assert keys == {f"{batch['id']}:hook"}
        assert read_batch(job_dir)["spoold"]["handlers"]["hook"]["status"] == "ok"

        third = HandlerDispatcher([hook], "test-node")
        third.start()
        assert third.resume(spool) == 0
        assert third.drain(5)
        assert third.stop(timeout=5)
        assert len(server.received) == 1, "a delivered run is never repeated"
    finally:
        server.stop()


def test_plan_then_job_finished_then_resume_runs_once(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, batch = finish_like_the_core(tmp_path, "job1", [rec])
    dispatcher = make_dispatcher([rec])
    dispatcher.job_finished(job_dir, batch, None)
    dispatcher.job_finished(job_dir, batch, None)
    dispatcher.resume(tmp_path)
    assert dispatcher.drain(10)
    dispatcher.resume(tmp_path)
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert len(RecordingHandler.events) == 1
    event = RecordingHandler.events[0]
    assert event.job == "job1" and event.job_dir == job_dir and event.status == "completed"
    assert event.idempotency_key == f"{batch['id']}:rec"


def test_job_finished_without_plan_plans_first(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, batch = make_job(tmp_path, "job1")
    dispatcher = make_dispatcher([rec])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert len(RecordingHandler.events) == 1
    assert read_runs(job_dir)["node"] == "test-node"


def test_runs_are_recorded_before_the_first_attempt(tmp_path: Path, make_dispatcher) -> None:
    seen: list[dict] = []

    class Spy(RecordingHandler):
        def handle(self, event) -> None:
            seen.append(json.loads((event.job_dir / "batch.json").read_text())["spoold"]["handlers"]["rec"])

    import handler_helpers

    handler_helpers.Spy = Spy  # type: ignore[attr-defined]
    spy = handler_config(name="rec", type="python", **{"class": "handler_helpers:Spy"})
    job_dir, batch = make_job(tmp_path, "job1")
    dispatcher = make_dispatcher([spy])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert seen and seen[0]["attempts"] == 1 and seen[0]["status"] == "pending"


def test_sidecar_selection_and_on_filter(tmp_path: Path, make_dispatcher) -> None:
    a = recorder("a")
    b = recorder("b")
    only_failed = handler_config(name="c", type="python", on=["failed"], **{"class": "handler_helpers:RecordingHandler"})
    job_dir, batch = make_job(tmp_path, "job1")
    dispatcher = make_dispatcher([a, b, only_failed])
    dispatcher.job_finished(job_dir, batch, ["a", "c"])
    assert dispatcher.drain(10)
    assert [e.handler for e in RecordingHandler.events] == ["a"]
    assert set(read_runs(job_dir)["runs"]) == {"a"}

    failed_dir, failed_batch = make_job(tmp_path, "job2", status="failed")
    dispatcher.job_finished(failed_dir, failed_batch, None)
    assert dispatcher.drain(10)
    assert sorted(e.handler for e in RecordingHandler.events) == ["a", "a", "b", "c"]
    assert read_batch(failed_dir)["status"] == "failed"


def test_a_failing_handler_does_not_hurt_another_or_the_job(tmp_path: Path, make_dispatcher) -> None:
    broken = recorder("broken", fail_times=99)
    fine = recorder("fine")
    copy_target = tmp_path / "outbox"
    copy_target.mkdir()
    copier = handler_config(name="copy", type="copy", target_dir=str(copy_target))
    job_dir, batch = make_job(tmp_path / "spool", "job1")
    before = file_digests(job_dir)
    outcomes: list[tuple[str, str]] = []
    retry = {"initial_backoff": 0.0, "max_attempts": 3}
    broken = handler_config(**{**broken.model_dump(by_alias=True), "retry": retry})
    dispatcher = make_dispatcher([broken, fine, copier], on_outcome=lambda n, o: outcomes.append((n, o)))
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    results = read_batch(job_dir)["spoold"]["handlers"]
    assert results["broken"]["status"] == "failed" and results["broken"]["attempts"] == 3
    assert "RuntimeError: scripted failure 3" in results["broken"]["last_error"]
    assert results["fine"]["status"] == "ok" and results["copy"]["status"] == "ok"
    assert sorted(outcomes) == [("broken", "failed"), ("copy", "ok"), ("fine", "ok")]
    assert read_batch(job_dir)["status"] == "completed"
    assert file_digests(job_dir) == before
    assert (copy_target / "job1" / "output.jsonl").exists()


def test_permanent_error_from_a_plugin_fails_at_once(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder(fail_times=1, permanent=True)
    job_dir, batch = make_job(tmp_path, "job1")
    dispatcher = make_dispatcher([rec])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    result = read_batch(job_dir)["spoold"]["handlers"]["rec"]
    assert result["status"] == "failed" and result["attempts"] == 1
    assert result["last_error"] == "refused for good"


def test_an_attempt_cut_short_by_a_crash_is_made_again(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, batch = finish_like_the_core(tmp_path, "job1", [rec])
    runs = read_runs(job_dir)
    runs["runs"]["rec"].update(attempts=1, last_attempt_at=time.time())  # counted, then the daemon died
    (job_dir / ".spoold" / "handlers.json").write_text(json.dumps(runs))
    dispatcher = make_dispatcher([rec])
    assert dispatcher.resume(tmp_path) == 1
    assert dispatcher.drain(10)
    assert [e.attempt for e in RecordingHandler.events] == [2]
    assert read_runs(job_dir)["runs"]["rec"]["status"] == "ok"


def test_resume_leaves_other_nodes_runs_alone(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    finish_like_the_core(tmp_path, "theirs", [rec], node="other-node")
    finish_like_the_core(tmp_path, "mine", [rec], node="test-node")
    dispatcher = make_dispatcher([rec])
    assert dispatcher.resume(tmp_path) == 1
    assert dispatcher.drain(10)
    assert [e.job for e in RecordingHandler.events] == ["mine"]


def test_a_job_requeued_while_pending_is_dropped_quietly(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, batch = finish_like_the_core(tmp_path, "job1", [rec])
    os.rename(job_dir, tmp_path / "inbox" / "moved-away")
    dispatcher = make_dispatcher([rec])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert RecordingHandler.events == []


def test_a_job_that_runs_no_handler_gets_no_records_file(tmp_path: Path) -> None:
    """No handler picked (or none configured): no handlers.json is written (one durable write fewer per
    job); planning again still finds none, and a job that does run one gets its file."""
    job_dir, batch = make_job(tmp_path, "job1")
    assert plan_runs(job_dir, batch, None, [], node="n").runs == {}
    assert plan_runs(job_dir, batch, [], [recorder()], node="n").runs == {}  # the sidecar picked none
    assert not (job_dir / ".spoold" / "handlers.json").exists()
    assert list(plan_runs(job_dir, batch, None, [recorder()], node="n").runs) == ["rec"]
    assert read_runs(job_dir)["runs"]["rec"]["status"] == "pending"


def test_replanning_a_new_finish_replaces_old_records(tmp_path: Path) -> None:
    rec = recorder()
    job_dir, batch = make_job(tmp_path, "job1", status="failed")
    first = plan_runs(job_dir, batch, None, [rec], node="n")
    again = plan_runs(job_dir, batch, None, [rec], node="n", now=first.planned_at + 100)
    assert again.planned_at == first.planned_at, "the same finish is planned once"
    requeued = dict(batch, id="batch_new", status="completed")
    fresh = plan_runs(job_dir, requeued, None, [rec], node="n")
    assert fresh.batch_id == "batch_new" and fresh.status == "completed"


def test_unconfigured_handler_stays_pending_until_configured_again(tmp_path: Path, make_dispatcher) -> None:
    rec = recorder()
    job_dir, _ = finish_like_the_core(tmp_path, "job1", [rec])
    dispatcher = make_dispatcher([])
    assert dispatcher.resume(tmp_path) == 0
    assert read_runs(job_dir)["runs"]["rec"]["status"] == "pending"
    dispatcher.reconfigure([rec])  # SIGHUP with the handler back in spoold.yaml
    assert dispatcher.resume(tmp_path) == 1
    assert dispatcher.drain(10)
    assert read_runs(job_dir)["runs"]["rec"]["status"] == "ok"


def test_plan_runs_method_never_raises(tmp_path: Path) -> None:
    dispatcher = HandlerDispatcher([recorder()], "test-node")
    assert dispatcher.plan_runs(tmp_path / "vanished", {"id": "b", "status": "completed"}, None) is None
