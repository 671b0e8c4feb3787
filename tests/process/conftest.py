"""Session fixtures for process tests: real servers the store handlers deliver to (tests/servers.py).

Each server starts on first use and once per test session (Label Studio's first
start runs its database migrations, about a minute and a half on two cores),
and is stopped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import LabelStudioServer, MotoServer, PostgresServer


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
    server = LabelStudioServer()
    try:
        yield server.start()
    finally:
        server.stop()
