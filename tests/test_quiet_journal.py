"""A healthy host's journal is quiet: a clean start, a job, a reload and a stop log nothing at warning or above."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import pytest
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyEmitter

from spoold.watcher import InboxWatcher, quiet_stop_race


def test_watchdogs_stop_race_is_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Drive watchdog's own race deterministically: a read on an emitter that was just stopped."""
    InboxWatcher(tmp_path, "inotify", 1.0, threading.Event())  # installs the filter, as the daemon does
    emitter = InotifyEmitter(__import__("queue").Queue(), ObservedWatch(str(tmp_path), recursive=False))
    emitter.on_thread_start()
    emitter.stop()
    with caplog.at_level(logging.INFO):
        emitter.queue_events(0.1)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    with caplog.at_level(logging.DEBUG):
        emitter.queue_events(0.1)
    assert [(r.levelname, r.name) for r in caplog.records] == [("DEBUG", "watchdog.observers.inotify")]


def test_other_watchdog_errors_still_show(caplog: pytest.LogCaptureFixture) -> None:
    quiet_stop_race()
    quiet_stop_race()  # idempotent
    logger = logging.getLogger("watchdog.observers.inotify")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.error("inotify watch limit reached")
    assert [r.levelname for r in caplog.records] == ["ERROR"]


@pytest.mark.slow
def test_start_job_reload_stop_log_nothing_at_warning_or_above(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, watch={"mode": "inotify"}, logging={"format": "json", "level": "info"},
                       metrics={"listen": "127.0.0.1:0"}) as d:  # fmt: skip
        d.start()
        wait_for(lambda: "spoold ready" in d.log(), 30, what="the daemon to be ready")
        drop_job(d.inbox, "calm", [chat_line(f"c{i}", "hello") for i in range(20)], {"metadata": {"who": "test"}})
        job = d.wait_finished("calm")
        assert job.parent.name == "done"
        d.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.log(), 30, what="the reload")
        assert d.stop() == 0
    records, stray = [], []
    for line in d.log().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            stray.append(line)  # printed outside logging: a traceback, a warning, a library's print
    assert not stray, "lines outside the log format:\n" + "\n".join(stray)
    loud = [r for r in records if r["level"] not in ("debug", "info")]
    assert not loud, "logged at warning or above:\n" + "\n".join(json.dumps(r) for r in loud)
    said = [r["msg"] for r in records]
    assert any("spoold ready" in m for m in said) and any("configuration reloaded" in m for m in said)
    assert any(m == "stopping" for m in said)
