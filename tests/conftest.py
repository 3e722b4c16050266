"""Shared fixtures: a real server per test on loopback, with its own data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.sfu.ice_policy import IcePolicy
from tests.support.postgres import database_url
from tests.support.server import RunningServer, running_server, test_settings
from tests.support.turn import PrivateTurn

# Nothing in the tests may send beyond loopback, including in-process aiortc clients.
IcePolicy.loopback().install()


@pytest.fixture
def database() -> str:
    """The `server` fixture's database: "sqlite", or also "postgresql" in the modules that
    tests/integration/conftest.py runs on both."""
    return "sqlite"


@pytest.fixture
async def server(tmp_path: Path, database: str) -> AsyncIterator[RunningServer]:
    async with (
        database_url(database) as url,
        running_server(test_settings(tmp_path, database_url=url)) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateTurn]:
    """A real coturn on loopback (infra/turn.sh), relaying to the SFU on 127.0.0.1 only."""
    relay = PrivateTurn(tmp_path_factory.mktemp("turn"))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
