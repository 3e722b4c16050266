"""The database: what the migrations build is what the models describe (SQLite and PostgreSQL),
machines that start together migrate a shared PostgreSQL database once, and a restarted
PostgreSQL costs a running worker no request."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from server.auth.principal import Role
from server.db import engine as engine_module
from server.db.engine import alembic_config, create_engine, migrate
from server.db.models import Base
from tests.support import server as support
from tests.support.postgres import admin_url, database_url, fresh_database, libpq_dsn


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_migrations_build_the_schema_the_models_describe(
    tmp_path: Path, database: str
) -> None:
    # SQLite ignores most of a column's declared type; PostgreSQL enforces lengths and types, so
    # a model and a migration that disagree fail there first.
    async with database_url(database) as url:
        engine = create_engine(url or f"sqlite+aiosqlite:///{tmp_path / 'schema.db'}")
        try:
            await migrate(engine)
            async with engine.connect() as connection:
                differences = await connection.run_sync(_differences)
        finally:
            await engine.dispose()
    assert differences == []


async def test_machines_starting_together_migrate_a_shared_database_once() -> None:
    async with fresh_database() as url:
        engines = [create_engine(url) for _ in range(3)]
        try:
            # Without the advisory lock these wait on each other's DDL until the timeout.
            async with asyncio.timeout(60):
                await asyncio.gather(*(migrate(engine) for engine in engines))
            await migrate(engines[0])  # a later start finds nothing to do
            async with engines[0].connect() as connection:
                versions = list(
                    await connection.scalars(text("SELECT version_num FROM alembic_version"))
                )
        finally:
            for engine in engines:
                await engine.dispose()
    assert versions == [ScriptDirectory.from_config(alembic_config(url)).get_current_head()]


_FAILING = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("half_done", sa.String(8), nullable=True))
    op.create_table("half_made", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("this migration fails after its DDL")
"""


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_failing_migration_leaves_the_schema_as_it_was(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite the driver used to commit each CREATE and ALTER on its own: a failure left a
    # half-changed schema that the next start could not migrate ("duplicate column").
    async with database_url(database) as url:
        engine = create_engine(url or f"sqlite+aiosqlite:///{tmp_path / 'upgrade.db'}")
        try:
            await migrate(engine)
            head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
            failing = tmp_path / "migrations"
            shutil.copytree(engine_module.MIGRATIONS_DIR, failing)
            (failing / "versions" / "9999_fails.py").write_text(_FAILING.format(head=head))
            monkeypatch.setattr(engine_module, "MIGRATIONS_DIR", failing)
            with pytest.raises(RuntimeError, match="fails after its DDL"):
                await migrate(engine)
            async with engine.connect() as connection:
                tables, columns = await connection.run_sync(
                    lambda sync: (
                        inspect(sync).get_table_names(),
                        [c["name"] for c in inspect(sync).get_columns("users")],
                    )
                )
                version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        finally:
            await engine.dispose()
    assert "half_made" not in tables
    assert "half_done" not in columns
    assert version == head


async def test_a_restarted_database_costs_no_request(tmp_path: Path) -> None:
    """PostgreSQL restarted (or failed over) under a running worker: the worker's pooled
    connections are dead, and the next requests must still be answered."""
    async with (
        fresh_database() as url,
        support.running_server(support.test_settings(tmp_path, database_url=url)) as server,
    ):
        await server.user("teller1", Role.TELLER)
        teller = server.client()
        await teller.login("teller1")
        await teller.call("GET", "/api/v1/sessions")
        name = make_url(url).database
        killed = await _terminate_connections(name)
        assert killed >= 1  # the worker's pool held connections
        for _ in range(3):
            await teller.call("GET", "/api/v1/sessions")
            await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)


async def _terminate_connections(database: str | None) -> int:
    connection = await asyncpg.connect(libpq_dsn(admin_url()))
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await connection.close()
    return len(rows)
