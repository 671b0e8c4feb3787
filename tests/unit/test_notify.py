"""spoold.service.notify against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from spoold.service.notify import Notifier

from notify_listener import NotifyListener, NotifyMessage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drain(listener: NotifyListener, notifier: Notifier) -> list[NotifyMessage]:
    """Everything sent so far: a marker status goes last, datagrams keep their order."""
    marker = f"marker-{uuid.uuid4()}"
    notifier.status(marker)
    listener.wait_for(lambda m: m.get("STATUS") == marker, timeout=5)
    return [m for m in listener.messages if m.get("STATUS") != marker]


@pytest.fixture
def listener():
    with NotifyListener() as listener:
        yield listener


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("idle")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.extend_timeout(10)
    notifier.stopping()
    with notifier.watchdog_grace(30):
        pass


def test_ready_and_status_only_when_changed(listener: NotifyListener) -> None:
    notifier = Notifier.from_env(listener.env())
    notifier.ready("idle")
    notifier.status("idle")
    notifier.status("job reviews: chunk 1 of 4")
    notifier.status("job reviews: chunk 1 of 4")
    notifier.status("line one\nline two")
    sent = _drain(listener, notifier)
    assert [m.raw for m in sent] == [
        "READY=1\nSTATUS=idle",
        "STATUS=job reviews: chunk 1 of 4",
        "STATUS=line one line two",
    ]
    assert all(m.pid == os.getpid() for m in sent)


def test_from_env_unsets_the_variables_for_children(listener: NotifyListener) -> None:
    env = listener.env(watchdog_sec=10, watchdog_pid=os.getpid())
    notifier = Notifier.from_env(env)
    assert env == {}
    assert notifier.enabled and notifier.watchdog_timeout == 10.0
    kept = listener.env()
    Notifier.from_env(kept, unset_environment=False)
    assert kept == listener.env()


def test_watchdog_is_rate_limited_to_half_the_interval(listener: NotifyListener) -> None:
    clock = FakeClock()
    notifier = Notifier.from_env(listener.env(watchdog_sec=2), clock=clock)
    assert notifier.watchdog_timeout == 2.0
    assert notifier.watchdog_interval == 1.0
    for offset in (0.0, 0.3, 0.99, 1.0, 1.5, 1.99, 2.0, 5.0):
        clock.now = 1000.0 + offset
        notifier.watchdog()
    pings = [m for m in _drain(listener, notifier) if m.get("WATCHDOG") == "1"]
    assert len(pings) == 4  # at 0, 1.0, 2.0 and 5.0


def test_watchdog_in_real_time(listener: NotifyListener) -> None:
    notifier = Notifier.from_env(listener.env(watchdog_sec=0.2))
    deadline = time.monotonic() + 0.55
    while time.monotonic() < deadline:
        notifier.watchdog()
        time.sleep(0.005)
    pings = [m for m in _drain(listener, notifier) if "WATCHDOG" in m]
    assert 3 <= len(pings) <= 7  # about one per 0.1 s, not one per call (~100 calls)


def test_watchdog_meant_for_another_pid_is_ignored(listener: NotifyListener) -> None:
    notifier = Notifier.from_env(listener.env(watchdog_sec=2, watchdog_pid=os.getpid() + 1))
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert _drain(listener, notifier) == []


def test_watchdog_without_watchdog_usec_sends_nothing(listener: NotifyListener) -> None:
    notifier = Notifier.from_env(listener.env())
    notifier.watchdog()
    assert _drain(listener, notifier) == []


def test_stopping_reloading_and_extend_timeout(listener: NotifyListener) -> None:
    notifier = Notifier.from_env(listener.env())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready()
    notifier.extend_timeout(90)
    notifier.stopping("stopping: checkpointing reviews")
    sent = _drain(listener, notifier)
    assert sent[0]["RELOADING"] == "1"
    assert before <= int(sent[0]["MONOTONIC_USEC"]) <= after
    assert sent[1].raw == "READY=1"
    assert sent[2].raw == "EXTEND_TIMEOUT_USEC=90000000"
    assert sent[3].raw == "STOPPING=1\nSTATUS=stopping: checkpointing reviews"


def test_watchdog_grace_raises_then_restores_the_timeout(listener: NotifyListener) -> None:
    clock = FakeClock()
    notifier = Notifier.from_env(listener.env(watchdog_sec=60), clock=clock)
    with notifier.watchdog_grace(900):
        clock.now += 500
    notifier.watchdog()  # just pinged on leaving the grace: nothing new
    with notifier.watchdog_grace(10):  # never shorter than the unit's own WatchdogSec=
        pass
    sent = _drain(listener, notifier)
    assert [m.raw for m in sent] == [
        "WATCHDOG_USEC=900000000\nWATCHDOG=1",
        "WATCHDOG_USEC=60000000\nWATCHDOG=1",
        "WATCHDOG_USEC=60000000\nWATCHDOG=1",
        "WATCHDOG_USEC=60000000\nWATCHDOG=1",
    ]


def test_abstract_socket_address() -> None:
    name = f"spoold-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("idle")
        assert server.recv(4096) == b"READY=1\nSTATUS=idle"


def test_a_vanished_socket_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with NotifyListener() as listener:
        env = listener.env()
    notifier = Notifier.from_env(env)
    with caplog.at_level(logging.WARNING, logger="spoold.service.notify"):
        for i in range(3):
            notifier.status(f"status {i}")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1


def test_unsupported_socket_kind_disables_notifications() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_stop_during_a_long_call_extends_the_stop_timeout_until_it_ends(listener: NotifyListener) -> None:
    import threading

    notifier = Notifier.from_env(listener.env())
    stop = threading.Event()
    with notifier.extend_stop_timeout(stop, seconds=0.3, limit=60, doing="loading model m"):
        time.sleep(0.3)
        assert not listener.messages_with("EXTEND_TIMEOUT_USEC")  # no stop yet: nothing asked
        stop.set()
        time.sleep(0.5)
    ended = len(listener.messages)
    time.sleep(0.3)
    extends = [m.raw for m in listener.messages_with("EXTEND_TIMEOUT_USEC")]
    assert len(extends) >= 3 and set(extends) == {"EXTEND_TIMEOUT_USEC=300000"}  # re-sent every 0.1 s
    assert len(listener.messages) == ended  # and not after the call returned


def test_stop_timeout_extension_gives_up_at_its_limit(listener: NotifyListener) -> None:
    import threading

    notifier = Notifier.from_env(listener.env())
    stop = threading.Event()
    stop.set()
    with notifier.extend_stop_timeout(stop, seconds=0.15, limit=0.2, doing="loading model m"):
        time.sleep(0.8)  # a hung load: systemd must be able to kill it after all
    assert 1 <= len(listener.messages_with("EXTEND_TIMEOUT_USEC")) <= 5
