"""Engine, session factory and schema migrations (Alembic, applied at start-up)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The advisory lock that serialises migrations on PostgreSQL ("vteller" in ASCII).
_LOCK = 0x76_74_65_6C_6C_65_72

__all__ = ["DbSession", "create_engine", "exclusive", "migrate", "session_factory"]


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            # The database holds password hashes and session records: owner-only, like the keys.
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            Path(path).touch(mode=0o600, exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # A database server restarts and fails over: a pooled connection it closed is replaced when
    # it is next checked out, instead of failing the request that drew it.
    return create_async_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers proceed during a write; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[DbSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


async def migrate(engine: AsyncEngine, keys_dir: Path | None = None) -> None:
    """Bring the schema to the newest revision (idempotent).

    `keys_dir` is the deployment's keys directory, for migrations that seal data in clear until
    then (0016); without it such a migration refuses, naming the fix, if there is any to seal.

    All or nothing on both databases: a migration that fails leaves the schema as it was."""

    def upgrade(sync_connection: object) -> None:
        config = alembic_config(str(engine.url))
        config.attributes["connection"] = sync_connection
        config.attributes["keys_dir"] = keys_dir
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Machines sharing the database start at any time: one migrates, the others wait for
            # its commit and then find nothing left to do (the lock ends with the transaction).
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        else:
            # The sqlite3 driver opens a transaction only before INSERT, UPDATE and DELETE, so
            # each CREATE or ALTER would commit on its own and a failing migration leave the
            # schema half changed, which the next start cannot migrate. Opened here, the
            # transaction holds the whole upgrade (SQLite's DDL is transactional).
            await connection.execute(text("BEGIN IMMEDIATE"))
        await connection.run_sync(upgrade)


async def exclusive(db: DbSession, *names: str) -> None:
    """Hold off every other transaction that takes any of `names`, in every worker on this
    database, until this one ends: reading counts and writing by them becomes one step.

    Must be the transaction's first statement on SQLite, which has one writer at a time: taking
    its write lock before the reads (rather than at the first write) is the exclusion there.
    """
    if db.get_bind().dialect.name == "postgresql":
        # In one order: two transactions that share two names never each hold the other's.
        for lock in sorted(_lock_id(name) for name in names):
            await db.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})
    else:
        await db.execute(text("BEGIN IMMEDIATE"))


def _lock_id(name: str) -> int:
    # A signed 64-bit advisory lock key; the migration lock above is one more.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
