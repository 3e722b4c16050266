"""Throwaway databases on the tests' PostgreSQL cluster (`bash infra/test.sh` starts it).

Tests that claim PostgreSQL behaviour create a database of their own with `fresh_database()`.
`VTELLER_TEST_DATABASE=postgresql` puts every in-process test server on one as well, to run the
whole suite on PostgreSQL (docs/deployment.md, "Testing on PostgreSQL").
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

ADMIN_URL_ENV = "VTELLER_TEST_POSTGRES_URL"
WHOLE_SUITE_ENV = "VTELLER_TEST_DATABASE"


def whole_suite_on_postgres() -> bool:
    return os.environ.get(WHOLE_SUITE_ENV, "sqlite") == "postgresql"


def admin_url() -> str:
    url = os.environ.get(ADMIN_URL_ENV)
    if not url:
        # A test of PostgreSQL behaviour must not pass (or skip) without PostgreSQL.
        raise RuntimeError(
            f"{ADMIN_URL_ENV} is not set: run the tests with `bash infra/test.sh`, or start a "
            "cluster (`bash infra/postgres.sh start --data-dir /tmp/pg --port 5433`) and set "
            f"{ADMIN_URL_ENV} to the URL `bash infra/postgres.sh env ...` prints"
        )
    return url


def libpq_dsn(url: str) -> str:
    # asyncpg takes a plain postgresql:// DSN, not SQLAlchemy's "+asyncpg" form.
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create(name: str) -> str:
    """Create database `name` unless it exists; its SQLAlchemy URL."""
    admin = admin_url()
    connection = await asyncpg.connect(libpq_dsn(admin))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await connection.close()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


async def database_of(data_dir: Path) -> str:
    """The database of the server whose data directory is `data_dir`, in the whole-suite mode:
    a server started again on the same directory finds its data, as it would in SQLite. Left
    for the cluster's wipe at the next `infra/test.sh` (a stopped server's data is what a
    restart test reads)."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]  # tmp_path: absolute
    return await _create(f"vteller_dir_{digest}")


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The SQLAlchemy URL of a new, empty database, dropped afterwards."""
    name = f"vteller_test_{uuid.uuid4().hex[:16]}"
    url = await _create(name)
    try:
        yield url
    finally:
        admin = admin_url()
        connection = await asyncpg.connect(libpq_dsn(admin))
        try:
            # FORCE: a killed server process may still hold connections.
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


@asynccontextmanager
async def database_url(kind: str) -> AsyncIterator[str]:
    """A `database_url` setting: "" (SQLite in the data directory) or a fresh PostgreSQL one."""
    if kind == "sqlite":
        yield ""
    elif kind == "postgresql":
        async with fresh_database() as url:
            yield url
    else:
        raise ValueError(f"unknown database {kind!r}: 'sqlite' or 'postgresql'")
