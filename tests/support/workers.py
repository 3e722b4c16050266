"""Worker registries of their own on a test database, hosting no media (server/workers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession
from server.settings import Settings
from server.sfu.rooms import RoomRegistry
from server.workers.registry import WorkerRegistry


class EmptyRooms:
    """What the heartbeat reads of a worker's rooms; these tests host no media."""

    def __len__(self) -> int:
        return 0

    def peer_count(self) -> int:
        return 0

    async def reconcile(self, worker_id: str) -> None:
        pass


@asynccontextmanager
async def registered_worker(
    db: async_sessionmaker[DbSession], settings: Settings
) -> AsyncIterator[WorkerRegistry]:
    registry = WorkerRegistry(db, settings, cast(RoomRegistry, EmptyRooms()))
    await registry.start()
    try:
        yield registry
    finally:
        await registry.stop()
