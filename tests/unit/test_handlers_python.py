"""type: python handlers: loading `module:Class`, the documented interface, and the SQLite example."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from spoold.errors import ConfigError
from spoold.service.handler_runs import HandlerDispatcher

from handler_helpers import RecordingHandler, handler_config, make_dispatcher, make_job, read_batch  # noqa: F401


@pytest.fixture(autouse=True)
def _reset() -> None:
    RecordingHandler.events = []


def python_handler(cls: str, name: str = "py", **kwargs: object):
    return handler_config(name=name, type="python", **{"class": cls}, **kwargs)


def test_a_site_handler_from_a_module_runs(tmp_path: Path, make_dispatcher) -> None:
    job_dir, batch = make_job(tmp_path, "job1")
    config = python_handler("handler_helpers:RecordingHandler", settings={"fail_times": 1})
    outcomes: list[tuple[str, str]] = []
    dispatcher = make_dispatcher([config], on_outcome=lambda n, o: outcomes.append((n, o)))
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert [e.attempt for e in RecordingHandler.events] == [1, 2]
    event = RecordingHandler.events[-1]
    assert event.batch["id"] == batch["id"] and "handlers" not in event.batch["spoold"]
    assert event.output == job_dir / "output.jsonl" and event.errors == job_dir / "errors.jsonl"
    assert read_batch(job_dir)["spoold"]["handlers"]["py"]["status"] == "ok"
    assert outcomes == [("py", "ok")]


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ("no_such_module_xyz:Thing", "cannot import no_such_module_xyz"),
        ("handler_helpers:Missing", "handler_helpers has no Missing"),
        ("handler_helpers:NotAHandler", "is not a subclass of spoold.handlers.base.Handler"),
        ("spoold.handlers.examples.sqlite_import:SQLiteImporter", "settings.database"),
    ],
)
def test_bad_python_handlers_are_config_errors(cls: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HandlerDispatcher([python_handler(cls)], "n")


def test_sqlite_example_imports_idempotently(tmp_path: Path, make_dispatcher) -> None:
    database = tmp_path / "results.sqlite"
    config = python_handler("spoold.handlers.examples.sqlite_import:SQLiteImporter", name="db", settings={"database": str(database)})
    job_dir, batch = make_job(tmp_path / "spool", "job1")
    dispatcher = make_dispatcher([config])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    # A repeat (as after a crash between delivery and its record) leaves the same rows.
    dispatcher.reconfigure([config])
    (job_dir / ".spoold" / "handlers.json").unlink()
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT batch_id, job, custom_id, status_code, content, error FROM results ORDER BY custom_id").fetchall()
    assert rows == [
        (batch["id"], "job1", "a", 200, "hi", None),
        (batch["id"], "job1", "b", None, None, "bad line"),
    ]
    assert read_batch(job_dir)["spoold"]["handlers"]["db"]["status"] == "ok"
