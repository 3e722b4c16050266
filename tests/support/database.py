"""A migrated SQLite database of vteller's schema, for tests of one service against it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession, create_engine, migrate, session_factory
from server.db.models import User

TELLER_ID = "u1"


@asynccontextmanager
async def migrated_database(path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    """The database at `path`, migrated, with one teller (`TELLER_ID`) that sessions can name."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    factory = session_factory(engine)
    async with factory() as session, session.begin():
        session.add(
            User(id=TELLER_ID, username="t", display_name="t", role="teller", password_hash="x")
        )
    try:
        yield factory
    finally:
        await engine.dispose()
