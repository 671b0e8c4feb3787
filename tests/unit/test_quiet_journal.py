"""A healthy host's journal is quiet: a clean start, a job, a reload and a stop log nothing at warning or above."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import pytest
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyEmitter

from spoold.service.logs import VllmNoticeFilter
from spoold.spool.watcher import InboxWatcher, quiet_stop_race

from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for


def test_watchdogs_stop_race_is_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Drive watchdog's own race deterministically: a read on an emitter that was just stopped."""
    InboxWatcher(tmp_path, "inotify", threading.Event())  # installs the filter, as the daemon does
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


def test_vllm_configuration_notices_are_info_other_warnings_stay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    notice = "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup."
    cases = [
        ("vllm.config.vllm", notice, "INFO"),
        ("vllm.platforms.cpu", "Triton is not installed. triton-cpu is expected on x86 CPUs.", "INFO"),
        ("vllm.config.vllm", "max_model_len is larger than the model allows", "WARNING"),
        ("vllm.v1.utils", "[shutdown] Process manager: force killing remaining processes count=1", "WARNING"),
        ("spoold.daemon", notice, "WARNING"),  # only vLLM's own records
    ]
    filt = VllmNoticeFilter()
    for name, message, level in cases:
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None)
        assert filt.filter(record) and record.levelname == level, (name, message)
    try:
        raise ValueError("Expecting property name enclosed in double quotes")
    except ValueError:
        import sys

        error = logging.LogRecord("vllm.tool_parsers.hermes_tool_parser", logging.ERROR, __file__, 1,
                                  "Error in extracting tool call from response.", (), sys.exc_info())  # fmt: skip
    assert filt.filter(error) and error.levelname == "INFO" and error.exc_info is None  # one answer's outcome
    other = logging.LogRecord("vllm.v1.engine", logging.ERROR, __file__, 1, "EngineCore failed", (), None)
    assert filt.filter(other) and other.levelname == "ERROR"
    caplog.set_level(logging.WARNING)  # logging.level: warning: a demoted notice is not shown at all
    assert not filt.filter(logging.LogRecord("vllm.config.vllm", logging.WARNING, __file__, 1, notice, (), None))


def _loud_records(log: str) -> tuple[list[dict], list[str], list[str]]:
    """(records at warning or above, all messages, lines outside the JSON log format)."""
    records, stray = [], []
    for line in log.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            stray.append(line)
    loud = [r for r in records if r["level"] not in ("debug", "info")]
    return loud, [r["msg"] for r in records], stray


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
    loud, said, stray = _loud_records(d.log())
    assert not stray, "lines outside the log format (a traceback, a warning, a print):\n" + "\n".join(stray)
    assert not loud, "logged at warning or above:\n" + "\n".join(json.dumps(r) for r in loud)
    assert any("spoold ready" in m for m in said) and any("configuration reloaded" in m for m in said)
    assert any(m == "stopping" for m in said)


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_start_job_reload_stop_are_quiet(tmp_path: Path, tiny_state_dir: Path) -> None:
    """The same with the real engine: vLLM's configuration notices are info, and its processes exit in time
    (no "force killing" warning at the stop)."""
    engine = {"backend": "vllm", "state_dir": str(tiny_state_dir), "window": 16}
    with SpooldProcess(tmp_path, engine=engine, logging={"format": "json", "level": "info"}) as d:
        d.start({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
        drop_job(d.inbox, "calm", [chat_line(f"c{i}", "hello", max_tokens=4) for i in range(4)], {"model": "tiny-random"})
        assert d.wait_finished("calm", timeout=300).parent.name == "done"
        d.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.log(), 30, what="the reload")
        assert d.stop(timeout=120) == 0
    loud, said, stray = _loud_records(d.log())
    # vLLM's engine process writes plain lines to stderr, which the journal files at info: allowed, but no traceback.
    assert not [line for line in stray if "Traceback" in line or "Error" in line], "\n".join(stray)
    assert not loud, "logged at warning or above:\n" + "\n".join(json.dumps(r) for r in loud)
    assert any(m.startswith("[shutdown] MPClient: complete") for m in said)
