"""The handler interface: what a site implements to act on a finished job.

A handler is a class with `handle(event)`. It returns to say "delivered" and
raises to say "not delivered": `PermanentHandlerError` stops retrying at once,
any other exception is retried with backoff under the handler's retry policy.
The built-in handlers implement the same class, so every handler is
dispatched the same way.

Write handlers to be idempotent: a run whose success could not be recorded
(the daemon died in between) is attempted again after a restart.
`event.idempotency_key` is stable across retries and restarts for one
job and handler, so a receiver can drop duplicates.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class HandlerEvent:
    """A finished job as a handler sees it."""

    job: str
    """The job directory's name (NAME, or NAME.2 when NAME was taken)."""
    status: str
    """completed | failed | cancelled."""
    job_dir: Path
    output: Path
    errors: Path
    batch_file: Path
    batch: dict[str, Any] = field(repr=False)
    """The final batch object (batch.json without the live `spoold.handlers` results)."""
    handler: str
    """The configured name of the handler being run."""
    attempt: int
    """1 for the first attempt."""
    idempotency_key: str
    """`<batch id>:<handler name>`; the same on every attempt, before and after restarts."""


class HandlerError(Exception):
    """A failed attempt that is worth retrying; `retry_after` (seconds) is a hint for the next delay."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentHandlerError(HandlerError):
    """A failure that retrying cannot fix (a 4xx answer, a bad setting): the run fails at once."""

    retryable = False


class Handler(ABC):
    """Base class for handlers; sites subclass it for `type: python`.

    `settings` is the handler's `settings:` mapping from spoold.yaml. The
    constructor runs once at daemon start (and on reload): check settings there
    and raise ValueError or TypeError to refuse them. `handle` runs on a
    background thread, possibly at the same time for different jobs, and
    must bound its own time (there is no way to stop a Python thread).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings: dict[str, Any] = dict(settings)

    @abstractmethod
    def handle(self, event: HandlerEvent) -> None:
        """Deliver one finished job; return on success, raise on failure."""

    def close(self) -> None:  # noqa: B027 (optional hook with a no-op default)
        """Release resources when the daemon stops; the default does nothing."""


def import_extra(module: str, extra: str) -> ModuleType:
    """Import a built-in handler's optional library; ValueError in one line naming the extra if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(
            f"needs the Python package {module.split('.')[0]}, which is not installed ({exc}): pip install 'spoold[{extra}]'"
        ) from None


def read_secret_file(path: Path, setting: str) -> str:
    """A secret from the file a setting names, stripped; ValueError naming only the setting and the file
    (never the content) if it cannot be read or is empty."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {setting} {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{setting} {path} is empty")
    return value
