"""The audit log made unwritable for a while: actions that must be logged are then refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.server import RunningServer


@asynccontextmanager
async def audit_log_away(server: RunningServer) -> AsyncIterator[None]:
    """Renames the audit table (on either database) and puts it back on the way out."""
    engine = create_async_engine(server.settings.effective_database_url)
    try:
        async with engine.begin() as db:
            await db.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
        try:
            yield
        finally:
            async with engine.begin() as db:
                await db.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    finally:
        await engine.dispose()
