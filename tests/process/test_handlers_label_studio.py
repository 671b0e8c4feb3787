"""`type: label_studio` against a real Label Studio server (its own venv, SQLite, a throwaway user and token)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spoold.handlers.base import PermanentHandlerError
from spoold.handlers.registry import build_handler

from handler_helpers import event_for, handler_config, make_dispatcher, make_job, read_batch  # noqa: F401 (fixture)
from servers import LabelStudioServer


def _config(tmp_path: Path, server: LabelStudioServer, project: int, token: str | None = None, **settings: object):
    token_file = tmp_path / "ls.token"
    token_file.write_text((token or server.TOKEN) + "\n")
    return handler_config(name="review", type="label_studio", settings={"url": server.url, "token_file": str(token_file), "project_id": project,
                                                                         "batch_size": 2, **settings})  # fmt: skip


def _tasks(server: LabelStudioServer, project: int) -> list:
    return list(server.client().tasks.list(project=project, page_size=100, fields="all"))


def _job(tmp_path: Path, name: str):
    """Three chat requests: two answered, one failed; custom_ids a, b, c."""
    job_dir, batch = make_job(tmp_path / "spool", name)
    requests = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                 "body": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {cid}"}]}} for cid in "abc"]  # fmt: skip
    (job_dir / "input.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    outputs = [{"id": f"r-{cid}", "custom_id": cid, "response": {"status_code": 200, "body": {"model": "tiny", "choices": [{"message": {"content": f"answer {cid}"}}]}},
                "error": None} for cid in "ab"]  # fmt: skip
    (job_dir / "output.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outputs))
    error = {"id": "r-c", "custom_id": "c", "response": None, "error": {"code": "too_long", "message": "prompt too long", "line": 3}}
    (job_dir / "errors.jsonl").write_text(json.dumps(error) + "\n")
    return job_dir, batch


def test_one_task_per_record_and_a_repeat_adds_none(label_studio_server: LabelStudioServer, tmp_path: Path, make_dispatcher) -> None:
    project = label_studio_server.new_project("spoold once")
    job_dir, batch = _job(tmp_path, "review1")
    config = _config(tmp_path, label_studio_server, project, data={"prompt": "prompt", "answer": "answer", "why": "error"})
    outcomes: list[tuple[str, str]] = []
    dispatcher = make_dispatcher([config], on_outcome=lambda n, o: outcomes.append((n, o)))
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(60)
    assert read_batch(job_dir)["spoold"]["handlers"]["review"]["status"] == "ok" and outcomes == [("review", "ok")]
    tasks = sorted(_tasks(label_studio_server, project), key=lambda t: t.meta["custom_id"])
    assert [t.meta for t in tasks] == [{"spoold_batch_id": batch["id"], "custom_id": cid, "spoold_job": "review1"} for cid in "abc"]
    assert [t.data for t in tasks] == [
        {"prompt": "question a", "answer": "answer a", "why": ""},
        {"prompt": "question b", "answer": "answer b", "why": ""},
        {"prompt": "question c", "answer": "", "why": "prompt too long"},
    ]
    handler = build_handler(config)
    handler.handle(event_for(job_dir, batch, "review", attempt=2))  # twice run (a repeat after a restart) is still once
    assert len(_tasks(label_studio_server, project)) == 3


def test_a_run_cut_short_is_completed_without_duplicates(label_studio_server: LabelStudioServer, tmp_path: Path) -> None:
    project = label_studio_server.new_project("spoold partial")
    job_dir, batch = _job(tmp_path, "review2")
    client = label_studio_server.client()  # as if an earlier attempt died after importing "b" only
    client.projects.import_tasks(id=project, request=[{"data": {"prompt": "question b", "answer": "answer b"},
                                                       "meta": {"spoold_batch_id": batch["id"], "custom_id": "b", "spoold_job": "review2"}}])  # fmt: skip
    other = {"spoold_batch_id": batch["id"] + "_other", "custom_id": "a", "spoold_job": "x"}  # another batch whose id contains ours
    client.projects.import_tasks(id=project, request=[{"data": {"prompt": "p", "answer": "q"}, "meta": other}])
    build_handler(_config(tmp_path, label_studio_server, project)).handle(event_for(job_dir, batch, "review"))
    mine = sorted(t.meta["custom_id"] for t in _tasks(label_studio_server, project) if t.meta["spoold_batch_id"] == batch["id"])
    assert mine == ["a", "b", "c"]


def test_a_wrong_project_or_token_fails_at_once(label_studio_server: LabelStudioServer, tmp_path: Path, make_dispatcher) -> None:
    job_dir, batch = _job(tmp_path, "review3")
    dispatcher = make_dispatcher([_config(tmp_path, label_studio_server, 99999)])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(60)
    run = read_batch(job_dir)["spoold"]["handlers"]["review"]
    assert run["status"] == "failed" and run["attempts"] == 1
    assert run["last_error"] == f"Label Studio at {label_studio_server.url} has no project 99999 visible to this token (HTTP 404)"
    project = label_studio_server.new_project("spoold token")
    handler = build_handler(_config(tmp_path, label_studio_server, project, token="not-the-token"))
    with pytest.raises(PermanentHandlerError, match="refused the token") as info:
        handler.handle(event_for(job_dir, batch, "review"))
    assert "\n" not in str(info.value) and "not-the-token" not in str(info.value)
