"""When to try a failed handler run again, as pure functions of plain inputs."""

from __future__ import annotations

from collections.abc import Callable

from spoold.handlers.config import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempts: int, random: Callable[[], float]) -> float:
    """Delay before attempt `attempts + 1`, after `attempts` failed ones (>= 1).

    Exponential and capped; jitter spreads retries of many jobs against one
    receiver that came back up so they do not arrive in one burst.
    """
    exponent = max(attempts - 1, 0)
    try:
        delay = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        delay = policy.max_backoff
    delay = min(delay, policy.max_backoff)
    return delay * (1.0 - policy.jitter * random())


def next_attempt_at(
    policy: RetryPolicy,
    *,
    attempts: int,
    planned_at: float,
    now: float,
    retry_after: float | None,
    random: Callable[[], float],
) -> float | None:
    """When to retry, or None to give up (attempts used up, or the run would be older than max_age).

    A receiver's Retry-After is honoured up to max_backoff.
    """
    if attempts >= policy.max_attempts:
        return None
    delay = backoff_delay(policy, attempts, random)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, policy.max_backoff))
    due = now + delay
    if due > planned_at + policy.max_age:
        return None
    return due
