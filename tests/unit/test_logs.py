"""spoold.service.logs: journald priority prefixes, plain text, JSON lines; idempotent setup."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from spoold.service.logs import job_log, setup_logging, stream_is_journal


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def journal_file(tmp_path: Path) -> Iterator[tuple[TextIO, dict[str, str]]]:
    """A real file standing in for the journal stream, and the JOURNAL_STREAM naming it."""
    with open(tmp_path / "journal", "w+", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        yield stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_spoold_handler", False)]


def test_journal_lines_carry_syslog_priorities(journal_file: tuple[TextIO, dict[str, str]]) -> None:
    stream, env = journal_file
    setup_logging("debug", "auto", stream=stream, environ=env)
    log = logging.getLogger("spoold.test")
    log.debug("d")
    log.info("claimed (%d lines)", 12, extra={"job": "reviews"})
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("engine failed")
    stream.seek(0)
    lines = stream.read().splitlines()
    assert lines[:5] == [
        "<7>spoold.test: d",
        "<6>spoold.test: job reviews: claimed (12 lines)",
        "<4>spoold.test: w",
        "<3>spoold.test: e",
        "<2>spoold.test: c",
    ]
    assert lines[5] == "<3>spoold.test: engine failed"
    assert len(lines) > 7 and all(line.startswith("<3>") for line in lines[6:])  # the traceback too
    assert lines[-1] == "<3>RuntimeError: boom"


def test_inherited_journal_stream_for_another_fd_means_text(journal_file: tuple[TextIO, dict[str, str]]) -> None:
    _, env = journal_file
    other = io.StringIO()
    assert not stream_is_journal(other, env)
    setup_logging("info", "auto", stream=other, environ=env)
    logging.getLogger("spoold.test").info("hello")
    line = other.getvalue().strip()
    assert not line.startswith("<")
    assert line.endswith(" INFO spoold.test: hello")
    assert line[:4].isdigit()  # a timestamp first: no journald to add one


def test_text_without_journal() -> None:
    stream = io.StringIO()
    setup_logging("warning", "text", stream=stream, environ={})
    log = logging.getLogger("spoold.test")
    log.info("hidden")
    job_log(log, "reviews-2026-11").warning("moved to failed/: no valid line")
    assert stream.getvalue().strip().endswith("WARNING spoold.test: job reviews-2026-11: moved to failed/: no valid line")


def test_json_lines_parse() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream, environ={})
    log = logging.getLogger("spoold.test")
    log.info("chunk %d of %d done", 2, 5, extra={"job": "reviews", "chunk": 2})
    try:
        1 / 0
    except ZeroDivisionError:
        log.error("failed", exc_info=True, extra={"path": Path("/x")})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "spoold.test"
    assert first["msg"] == "chunk 2 of 5 done"
    assert first["job"] == "reviews" and first["chunk"] == 2
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "error" and second["path"] == "/x"
    assert "ZeroDivisionError" in second["exc"]


def test_setup_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=first, environ={})
    setup_logging("debug", "json", stream=second, environ={})
    assert len(_ours()) == 1
    logging.getLogger("spoold.test").debug("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"
    assert logging.getLogger().level == logging.DEBUG


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError):
        setup_logging("loud", "text", stream=io.StringIO())
    with pytest.raises(ValueError):
        setup_logging("info", "xml", stream=io.StringIO())
    assert _ours() == []


def test_stderr_by_default() -> None:
    handler = setup_logging("info", "text", environ={})
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
