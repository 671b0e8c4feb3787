"""Session fixtures for process tests: real servers the store handlers deliver to (tests/servers.py).

Each server starts on first use and once per test session, and is stopped at the end of the session.
Label Studio's first start runs its database migrations (a minute or more on two cores): when the
session's tests include one that uses it, it is launched in the background as soon as collection ends
(niced, so it takes only the CPU the tests before it leave idle) and its fixture just waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from servers import LabelStudioServer, MotoServer, PostgresServer


class _EarlyLaunch:
    """Label Studio launched in a thread (a missing .venv-ls is built first: make label-studio-venv)."""

    def __init__(self) -> None:
        self.server = LabelStudioServer()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._launch, name="label-studio-launch", daemon=True)
        self.thread.start()

    def _launch(self) -> None:
        try:
            self.server.launch(nice=10)
        except Exception as exc:  # raised again in the test that needs the server
            self.error = exc

    def ready(self) -> LabelStudioServer:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.server.wait_ready()

    def stop(self) -> None:
        self.thread.join(timeout=60)
        self.server.stop()


_early: list[_EarlyLaunch] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("label_studio_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _early.append(_EarlyLaunch())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The early-launched server, when its fixture never ran (a run stopped before its tests)."""
    while _early:
        _early.pop().stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio_server() -> Iterator[LabelStudioServer]:
    launched = _early.pop() if _early else None
    server = launched.server if launched is not None else LabelStudioServer()
    try:
        yield launched.ready() if launched is not None else server.start()
    finally:
        server.stop()
