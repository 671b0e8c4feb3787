"""Log setup: journald priorities under systemd, plain text in a shell, JSON for shippers.

Under systemd, stderr goes to the journal line by line; a `<N>` prefix (sd-daemon(3))
gives each line its syslog priority, so `journalctl -p err` shows the errors and
journald adds the timestamp. Pass `extra={"job": name}` (or use `job_log`) and every
format shows which job a line is about.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

_MARK = "_spoold_handler"
_FORMATS = ("auto", "text", "json", "journal")
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


VLLM_NOTICES = (
    "Triton is installed, but doesn't include CPU backend",
    "Triton is not installed. triton-cpu is expected",
    "Model Runner V2 requires Triton",
    "Reset SSM cache type to float32",
    "This model does not officially support disabling chunked prefill",
    "Enforce eager set, disabling torch.compile",
    "Inductor compilation was disabled by user settings",
)
"""vLLM warnings that only describe a configuration spoold or the profile chose on purpose (the CPU
build, chunked prefill off on CPU, a profile's `enforce_eager`): logged at info, so a healthy
host's `journalctl -p warning` stays empty. Every other vLLM warning stays a warning."""


VLLM_LINE_OUTCOMES = ("Error in extracting tool call from response.",)
"""vLLM errors about one answer, not the daemon: a tool parser that cannot read a model's call (e.g. one
cut short by max_tokens; the line's answer keeps the text as content). Logged at info, without the
traceback, so one bad answer per line of a batch does not fill the journal with errors."""


class VllmNoticeFilter(logging.Filter):
    """Demotes the VLLM_NOTICES and VLLM_LINE_OUTCOMES records to INFO (a handler filter: it sees every
    propagated record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno in (logging.WARNING, logging.ERROR) and record.name.startswith("vllm"):
            message = record.getMessage()
            known = VLLM_NOTICES if record.levelno == logging.WARNING else VLLM_LINE_OUTCOMES
            if any(message.startswith(notice) for notice in known):
                record.levelno, record.levelname = logging.INFO, "INFO"
                record.exc_info, record.exc_text = None, None
                return logging.getLogger().isEnabledFor(logging.INFO)
        return True


def syslog_priority(levelno: int) -> int:
    """Python level -> syslog priority: <3> err, <4> warning, <6> info, <7> debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    job = getattr(record, "job", None)
    return f"job {job}: {message}" if job else message


class JournalFormatter(logging.Formatter):
    """`<6>spoold.daemon: job X: claimed`; every traceback line keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {_message(record)}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines())


class TextFormatter(logging.Formatter):
    """`2026-11-25 10:00:01,123 INFO spoold.daemon: job X: claimed`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One object per line: ts, level, logger, msg, then extras such as job."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when $JOURNAL_STREAM names this very stream (not just an inherited variable)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Route the root logger to stderr in the chosen format; calling again replaces, never adds.

    fmt: auto (journal when stderr is the journal, else text) | text | json | journal.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(_FORMATS)}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    out = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "journal" if stream_is_journal(out, environ) else "text"
    formatter: logging.Formatter = {
        "journal": JournalFormatter,
        "text": TextFormatter,
        "json": JsonFormatter,
    }[fmt]()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(VllmNoticeFilter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    return handler


def job_log(logger: logging.Logger, job: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose every line carries `job` (shown as "job NAME: ..." / a JSON field)."""
    return logging.LoggerAdapter(logger, {"job": job})
