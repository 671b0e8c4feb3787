"""`type: exec`: run a command (an argv list, no shell) for a finished job.

The job's paths are in the environment, the batch object is on stdin. The
command runs in its own process group so a timeout kills it and whatever it
started. A non-zero exit is a failed attempt; the tail of its stderr is the
error. stdout and stderr go to unlinked temporary files, so a chatty command
can neither fill memory nor block on a full pipe.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
from typing import IO

from spoold.handlers.base import Handler, HandlerError, HandlerEvent
from spoold.handlers.config import ExecConfig

log = logging.getLogger(__name__)

TAIL_BYTES = 4096
ERROR_CHARS = 500


class ExecHandler(Handler):
    def __init__(self, config: ExecConfig) -> None:
        super().__init__(config.model_dump(mode="json", exclude={"env"}))
        self.config = config

    def handle(self, event: HandlerEvent) -> None:
        program = self.config.command[0]
        cwd = self.config.cwd or event.job_dir
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            stdin.write(json.dumps(event.batch, ensure_ascii=False).encode("utf-8") + b"\n")
            stdin.seek(0)
            try:
                proc = subprocess.Popen(
                    self.config.command,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    env=command_env(self.config, event),
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise HandlerError(f"cannot start {program}: {exc.strerror or exc}") from None
            try:
                code = proc.wait(timeout=self.config.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise HandlerError(f"{program} timed out after {self.config.timeout:g}s and was killed{_tail_suffix(stderr)}") from None
            if code != 0:
                raise HandlerError(f"{program} {_describe_exit(code)}{_tail_suffix(stderr)}")
            tail = read_tail(stderr)
            if tail:
                log.debug("handler %s: %s stderr: %s", event.handler, program, tail)


def command_env(config: ExecConfig, event: HandlerEvent) -> dict[str, str]:
    """The daemon's environment, the handler's `env:`, then the job's variables (which win)."""
    env = dict(os.environ)
    env.update(config.env)
    env.update(
        {
            "SPOOLD_JOB": event.job,
            "SPOOLD_STATUS": event.status,
            "SPOOLD_JOB_DIR": str(event.job_dir),
            "SPOOLD_OUTPUT": str(event.output),
            "SPOOLD_ERRORS": str(event.errors),
            "SPOOLD_BATCH": str(event.batch_file),
            "SPOOLD_BATCH_ID": str(event.batch.get("id", "")),
            "SPOOLD_HANDLER": event.handler,
            "SPOOLD_ATTEMPT": str(event.attempt),
            "SPOOLD_IDEMPOTENCY_KEY": event.idempotency_key,
        }
    )
    return env


def read_tail(stream: IO[bytes], limit: int = TAIL_BYTES) -> str:
    """The last `limit` bytes of a stream, as text on one line."""
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(size - limit, 0))
    text = stream.read().decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines)


def _tail_suffix(stderr: IO[bytes]) -> str:
    tail = read_tail(stderr)
    if not tail:
        return ""
    return ": " + (tail if len(tail) <= ERROR_CHARS else "..." + tail[-ERROR_CHARS:])


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its children too), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
