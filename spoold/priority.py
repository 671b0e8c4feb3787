"""The daemon's helper threads yield the CPU to the engine.

Claiming, validating, committing and finishing jobs are short bursts of work
(fsyncs, renames, a pass over an input). On a host with few cores, each burst
that wakes up pre-empts the engine's processes (the vLLM worker, its
scheduler) mid-step, and a step stalls. `background()` puts the calling thread
in `SCHED_BATCH` (woken threads do not pre-empt running ones) at nice +10, so
that bookkeeping runs when the engine leaves a core free, and at a tenth of
its weight when it does not. The lease keeper, the node lock's heartbeat and
the main loop (which feeds the engine) stay at normal priority: their timing
matters. Neither call needs a privilege (raising one's own nice value and
leaving `SCHED_OTHER` for `SCHED_BATCH` are always allowed, and the units'
`SystemCallFilter=@system-service` lets them through); where a sandbox refuses
them, the thread simply runs at normal priority.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10


def background() -> None:
    """Lower the calling thread's CPU priority (Linux: both calls act on one thread)."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (OSError, AttributeError) as exc:  # a sandbox that refuses it, or not Linux
        log.debug("helper thread keeps normal CPU priority: %s", exc)
