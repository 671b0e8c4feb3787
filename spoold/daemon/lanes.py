"""Ordering for the daemon's helper threads.

`Lanes`: a few single-thread executors; one job's tasks always take the same lane.

A job's cuts must be committed in the order they were taken and its end must
come last; different jobs' fsyncs may overlap. So each job is pinned to one
lane (FIFO), and the lanes run side by side.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from spoold.priority import background


class Lanes:
    def __init__(self, count: int, name: str) -> None:
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{i}", initializer=background) for i in range(count)]

    def submit(self, key: str, fn: Callable[..., Any], *args: Any) -> Future:
        return self._lanes[zlib.crc32(key.encode()) % len(self._lanes)].submit(fn, *args)

    def shutdown(self, wait: bool = True) -> None:
        for lane in self._lanes:
            lane.shutdown(wait=wait)


class Turnstile:
    """Tasks running on several threads pass one step in the order they were queued.

    The main thread takes a `ticket()` when it queues a task (into a FIFO pool);
    the task wraps the step in `turn(ticket)`. Every ticket must pass its turn
    exactly once, or the tickets behind it wait forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0
        self._serving = 0

    def ticket(self) -> int:
        with self._cond:
            self._issued += 1
            return self._issued - 1

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        with self._cond:
            while self._serving != ticket:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()
