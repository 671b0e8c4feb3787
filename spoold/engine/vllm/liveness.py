"""Never wait for good on vLLM's engine core: a dead core or a hung one becomes an EngineFailure in seconds.

vLLM 0.32's `SyncMPClient.get_output` is a `queue.Queue.get()` without a timeout.
When the engine core process dies (OOM killer, CUDA fault, `kill -9`), vLLM's own
monitor thread (`MPClientEngineMonitor`, which waits on the process sentinels)
sets `resources.engine_dead` within a fraction of a second and shuts the client
down, but nothing is ever put in the output queue, so a step already waiting,
and every later one, blocks forever (measured: the flag flips 0.15 s after the
kill; `get_output` still blocks 25 s later). A stopped core (SIGSTOP, a GPU that
no longer answers) is not dead at all: only a deadline notices it.

`CoreWatch.await_output` runs before each `LLMEngine.step`, on the same thread:
it returns as soon as the output queue holds something (so `get_output` will not
block), and raises EngineFailure as soon as vLLM's flag says the core died, or
once `engine.step_timeout_seconds` pass without output (then it kills the core,
so closing the engine does not wait for a process that cannot exit). We use
vLLM's own signal rather than a sentinel watch of ours (it already waits on the
sentinels, and it also covers a worker whose death the core reports), and no
step thread (the engine stays on one thread; nothing is left blocked behind).
An engine without an output queue (in-process, another vLLM) is stepped as before.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

from spoold.engine.base import EngineFailure

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
"""How often a waiting step looks at vLLM's engine-dead flag (output wakes it at once)."""


class CoreWatch:
    def __init__(self, core: Any, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._core = core
        out = getattr(core, "outputs_queue", None)
        self._queue: queue.Queue | None = out if isinstance(out, queue.Queue) else None
        self._resources = getattr(core, "resources", None)
        self._clock = clock
        self.longest = 0.0
        """The longest wait for output seen so far (seconds), for the log and the deadline's choice."""

    def dead(self) -> bool:
        return bool(getattr(self._resources, "engine_dead", False))

    def dead_reason(self) -> str:
        """One sentence: which engine process ended, and how."""
        ended = []
        for proc in self._processes():
            code = proc.exitcode
            if code is not None:
                ended.append(f"{proc.name} (pid {proc.pid}) {_how(code)}")
        return "the vLLM engine core died: " + (", ".join(ended) if ended else "vLLM reports it dead")

    def failure(self, exc: Exception, what: str) -> EngineFailure:
        """The engine as a whole failed: a dead core is told in one line (its traceback says nothing more)."""
        if self.dead():
            log.debug("vLLM engine %s after its core died", what, exc_info=True)
            return EngineFailure(self.dead_reason())
        log.error("vLLM engine %s", what, exc_info=True)
        lines = str(exc).strip().splitlines()
        return EngineFailure(f"vLLM engine failed: {lines[0] if lines else type(exc).__name__}")

    def await_output(self) -> None:
        """Return once the next `get_output` will not block; raise EngineFailure if the core died or hangs."""
        q = self._queue
        if q is None:
            return
        started = self._clock()
        deadline = started + self.timeout
        while True:
            with q.not_empty:  # the queue's own condition: a put wakes this wait at once
                if q._qsize():  # noqa: SLF001 - qsize() would take the lock we hold
                    break
                if not self.dead():
                    q.not_empty.wait(max(0.0, min(POLL_SECONDS, deadline - self._clock())))
                    if q._qsize():  # noqa: SLF001
                        break
            if self.dead():
                raise EngineFailure(self.dead_reason())
            if self._clock() >= deadline:
                self.kill()
                raise EngineFailure(
                    f"the vLLM engine core gave no output for {self.timeout:g} s (engine.step_timeout_seconds): "
                    f"it hangs, so it was killed (the longest wait before was {self.longest:.2f} s)"
                )
        self.longest = max(self.longest, self._clock() - started)

    def kill(self) -> None:
        """SIGKILL the engine core processes (a stopped process cannot act on SIGTERM); vLLM's monitor then cleans up."""
        for proc in self._processes():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if proc.exitcode is None:
                    proc.kill()
        for proc in self._processes():
            with contextlib.suppress(OSError, ValueError, AttributeError, AssertionError):
                proc.join(timeout=5)

    def _processes(self) -> list[Any]:
        manager = getattr(self._resources, "engine_manager", None)
        return list(getattr(manager, "processes", None) or [])


def request_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for one bad request (that line's error), as opposed to a dead engine."""
    errors: list[type[BaseException]] = [ValueError, TypeError]
    with contextlib.suppress(ImportError):
        from vllm.exceptions import VLLMClientError

        errors.append(VLLMClientError)
    return tuple(errors)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"
