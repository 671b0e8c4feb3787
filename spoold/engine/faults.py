"""Unexpected exceptions, told in one line and kept to their own line or job.

`one_line` is the summary used in a line's error record, a job's failure reason and
the log (the traceback goes to the debug log, once). `add_or_reject` keeps an
exception raised while one request enters the engine to that request.
"""

from __future__ import annotations

import logging

from spoold.engine.base import Engine, EngineError, EngineFailure, EngineRequest, EngineResult

log = logging.getLogger(__name__)

MAX_CHARS = 300


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, cut to MAX_CHARS."""
    lines = str(exc).strip().splitlines()
    message = lines[0].strip() if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3] + "..."


def add_or_reject(engine: Engine, request: EngineRequest) -> EngineResult | None:
    """engine.add(request); any exception but EngineFailure (the engine itself is gone) is this
    request's error, so one poison request cannot fail or stall its job."""
    try:
        return engine.add(request)
    except EngineFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - judged per request; the summary goes in its record
        log.debug("request on line %d could not enter the engine", request.line, exc_info=True)
        return EngineResult(
            request.key, request.custom_id, error=EngineError("invalid_request", f"the engine refused this request: {one_line(exc)}")
        )
