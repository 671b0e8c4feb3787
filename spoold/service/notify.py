"""systemd notify protocol (sd_notify(3)) for a Type=notify service, spoken directly.

The daemon's work loop calls `watchdog()` itself, as often as it likes: pings are
rate-limited here, and because no other thread sends them, a hung engine call or a
stuck loop stops the pings and systemd's WatchdogSec= restarts the unit.
Without $NOTIFY_SOCKET every method is a no-op, so the same code runs in a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(value: str | None) -> str | bytes | None:
    """Path sockets as they are; abstract ones ('@name') with the leading NUL."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying systemd", value)
    return None


def _watchdog_usec(environ: MutableMapping[str, str], pid: int) -> int | None:
    """$WATCHDOG_USEC if it is meant for this process (sd_watchdog_enabled(3) rules)."""
    value = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(value)
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """One process's conversation with systemd; methods never raise."""

    def __init__(
        self,
        address: str | bytes | None,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._clock = clock
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._last_status: str | None = None
        self._last_ping: float | None = None
        self._send_failed = False

    @classmethod
    def from_env(
        cls,
        environ: MutableMapping[str, str] | None = None,
        unset_environment: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> Notifier:
        """Read $NOTIFY_SOCKET / $WATCHDOG_USEC / $WATCHDOG_PID.

        By default they are then removed from the environment, so vLLM workers and
        exec handlers started later do not inherit them (as sd_notify's unset flag).
        """
        env = os.environ if environ is None else environ
        address = _socket_address(env.get("NOTIFY_SOCKET"))
        notifier = cls(address, _watchdog_usec(env, os.getpid()), clock=clock)
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_timeout(self) -> float | None:
        """systemd's WatchdogSec= in seconds, or None when no watchdog is armed."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    @property
    def watchdog_interval(self) -> float | None:
        """How often the loop must reach `watchdog()`: half the timeout (None: no watchdog).

        The daemon bounds every wait (poll sleep, engine step) by this.
        """
        timeout = self.watchdog_timeout
        return None if timeout is None else timeout / 2

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete: READY=1, with the first STATUS line."""
        fields = ["READY=1"]
        if status is not None and status != self._last_status:
            fields.append(f"STATUS={_one_line(status)}")
            self._last_status = status
        self._send(fields)

    def status(self, text: str) -> None:
        """One human line for `systemctl status`; sent only when it changed."""
        if text == self._last_status:
            return
        self._last_status = text
        self._send([f"STATUS={_one_line(text)}"])

    def watchdog(self) -> None:
        """Call freely from the work loop; pings at most every half of $WATCHDOG_USEC."""
        interval = self.watchdog_interval
        if interval is None:
            return
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < interval:
            return
        self._last_ping = now
        self._send(["WATCHDOG=1"])

    def stopping(self, status: str | None = None) -> None:
        """SIGTERM seen: the daemon is draining and will exit."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
            self._last_status = status
        self._send(fields)

    def reloading(self) -> None:
        """SIGHUP seen: reloading the config; finish with `ready()`."""
        self._send(["RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}"])

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before systemd's start/stop timeout fires (re-send to keep extending)."""
        self._send([f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}"])

    @contextmanager
    def watchdog_grace(self, seconds: float) -> Iterator[None]:
        """Allow one long blocking call (a model load) up to `seconds` without pings.

        Sends WATCHDOG_USEC=<seconds> and a ping before, and restores the unit's
        own timeout with a ping after. The call still trips the watchdog if it hangs
        longer than `seconds` (never less than the unit's WatchdogSec=). No-op when
        no watchdog is armed.
        """
        if self._watchdog_usec is None or not self.enabled:
            yield
            return
        usec = max(int(seconds * 1_000_000), self._watchdog_usec)
        self._send([f"WATCHDOG_USEC={usec}", "WATCHDOG=1"])
        try:
            yield
        finally:
            self._send([f"WATCHDOG_USEC={self._watchdog_usec}", "WATCHDOG=1"])
            self._last_ping = self._clock()

    @contextmanager
    def extend_stop_timeout(self, stop: threading.Event, seconds: float, limit: float, doing: str) -> Iterator[None]:
        """Around one long call that cannot be interrupted (a model load): if `stop` is set meanwhile
        (SIGTERM), send EXTEND_TIMEOUT_USEC=`seconds` at once and again every third of it until the
        call ends, so TimeoutStopSec= does not kill a daemon that will stop cleanly once the call
        returns. Never for longer than `limit` seconds after the stop (a hung call is still killed).

        A helper thread does the sending: the work loop is the one blocked. It sends nothing else.
        """
        if not self.enabled:
            yield
            return
        done = threading.Event()

        def extend() -> None:
            while not stop.wait(0.2):
                if done.is_set():
                    return
            if done.is_set():
                return
            log.info("stop requested while %s; asking systemd for more time until it finishes", doing)
            deadline = time.monotonic() + limit
            while not done.is_set() and time.monotonic() < deadline:
                self.extend_timeout(seconds)
                done.wait(seconds / 3)

        thread = threading.Thread(target=extend, name="stop-timeout-extender", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, fields: list[str]) -> None:
        if self._address is None or os.getpid() != self._pid:
            return  # not under systemd, or a forked child: only the main process speaks
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._send_failed:  # once: a vanished socket must not flood the log
                log.warning("cannot notify systemd at %r: %s", self._address, exc.strerror or exc)
                self._send_failed = True
            return
        self._send_failed = False


def _one_line(text: str) -> str:
    """STATUS= is a single line: newlines would start new assignments."""
    return " ".join(text.split())
