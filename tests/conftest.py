"""Shared fixtures: a real server per test on loopback, with its own data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.sfu.ice_policy import IcePolicy
from tests.support.server import RunningServer, running_server, test_settings

# Nothing in the tests may send beyond loopback, including in-process aiortc clients.
IcePolicy(["127.0.0.1"]).install()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(test_settings(tmp_path)) as running:
        yield running
