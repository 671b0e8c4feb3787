"""A fake systemd notify socket for tests: bind, collect datagrams, wait for one.

    with NotifyListener() as listener:
        proc = subprocess.Popen([...], env={**os.environ, **listener.env(watchdog_sec=2)})
        listener.wait_for(lambda m: m.get("READY") == "1", timeout=30)
        assert listener.messages_with("WATCHDOG")

Each message is a dict of its KEY=VALUE lines; `pid` of the sender is in `.pid`.
The socket lives in a short /tmp directory (unix socket paths are limited to 107
bytes, which pytest's tmp_path can exceed).
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class NotifyMessage(dict[str, str]):
    """KEY=VALUE fields of one datagram, plus when it arrived and who sent it."""

    def __init__(self, fields: dict[str, str], raw: str, at: float, pid: int | None) -> None:
        super().__init__(fields)
        self.raw = raw
        self.at = at
        self.pid = pid


class NotifyListener:
    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="spoold-notify-", dir="/tmp"))
        self.path = str(self._dir / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)

    def __enter__(self) -> NotifyListener:
        self._sock.bind(self.path)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(0.1)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def env(self, watchdog_sec: float | None = None, watchdog_pid: int | None = None) -> dict[str, str]:
        """Environment for the process under test (systemd would set these)."""
        env = {"NOTIFY_SOCKET": self.path}
        if watchdog_sec is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_sec * 1_000_000))
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    @property
    def messages(self) -> list[NotifyMessage]:
        with self._cond:
            return list(self._messages)

    def messages_with(self, key: str) -> list[NotifyMessage]:
        return [m for m in self.messages if key in m]

    def wait_for(
        self,
        predicate: Callable[[NotifyMessage], bool],
        timeout: float = 10.0,
        start: int = 0,
    ) -> NotifyMessage:
        """The first message from index `start` on that matches; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self._messages[start:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.raw for m in self._messages]
                    raise AssertionError(f"no matching notify message within {timeout}s; got {seen}")
                self._cond.wait(left)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(value[: _CREDS.size])[0]
            raw = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
            with self._cond:
                self._messages.append(NotifyMessage(fields, raw, time.monotonic(), pid))
                self._cond.notify_all()
