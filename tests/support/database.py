"""A migrated database of vteller's schema (SQLite, or a PostgreSQL one given), for tests of one
service against it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession, create_engine, migrate, session_factory
from server.db.models import Archive, CallSession, User

TELLER_ID = "u1"


@asynccontextmanager
async def migrated_database(
    path: Path, url: str = ""
) -> AsyncIterator[async_sessionmaker[DbSession]]:
    """The database at `url`, else SQLite at `path`, migrated, with one teller (`TELLER_ID`)
    that sessions can name."""
    engine = create_engine(url or f"sqlite+aiosqlite:///{path}")
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


async def add_session(
    factory: async_sessionmaker[DbSession], session_id: str = "s1", archives: tuple[str, ...] = ()
) -> None:
    """A wealth session of `TELLER_ID`'s, with archive rows of these ids (not yet sealed)."""
    async with factory() as session, session.begin():
        session.add(CallSession(id=session_id, business="wealth", teller_id=TELLER_ID))
        # Before the archives: the rows are related by foreign keys only, not by relationships.
        await session.flush()
        session.add_all(
            Archive(id=archive_id, session_id=session_id, business="wealth")
            for archive_id in archives
        )
