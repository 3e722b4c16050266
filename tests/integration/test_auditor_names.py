"""Customer names read from ID cards are never in the database in clear (docs/auditor.md
section 2): sealed for the portal to show, found by exact name through a keyed hash, and the
migration seals the names indexed in clear before it, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import Script, ScriptDirectory
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from server.auditor.idhash import KEY_FILE, NAME_CONTEXT, IdNumberHasher
from server.auditor.index import ArchiveIndex, SearchQuery
from server.auditor.names import CardNames, MigrationKeysMissing
from server.crypto.deployment_keys import (
    IDENTITY_KEYRING,
    DeploymentKeysDiffer,
    id_index_check_value,
    keyring_check_values,
)
from server.db.engine import DbSession, alembic_config, create_engine, migrate, session_factory
from server.db.models import Archive, CallSession, DeploymentKey, User
from tests.support.postgres import database_url

NAME = "李秀英"
SESSION = "s_0123456789abcdef01234567"
ARCHIVE = "0190d1e8-0000-7000-8000-000000000001"

pytestmark = pytest.mark.parametrize("database", ["sqlite", "postgresql"])


@pytest.fixture
async def engine(tmp_path: Path, database: str) -> AsyncIterator[AsyncEngine]:
    async with database_url(database) as url:
        engine = create_engine(url or f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        try:
            yield engine
        finally:
            await engine.dispose()


def _index(db: async_sessionmaker[DbSession], keys: Path) -> ArchiveIndex:
    hasher = IdNumberHasher.open(keys)
    return ArchiveIndex(db, hasher, CardNames(keys, hasher), None, page_size=20, wait_seconds=0)


async def _sealed_archive(db: async_sessionmaker[DbSession], customer_name: str = "") -> None:
    # Core inserts of the columns named: the schema may be an older revision's, without columns
    # the models have since gained (the ORM would insert those too).
    async with db() as session, session.begin():
        await session.execute(
            insert(User).values(
                id="u1", username="t", display_name="t", role="teller", password_hash="x"
            )
        )
        await session.execute(
            insert(CallSession).values(
                id=SESSION, business="wealth", teller_id="u1", customer_name=customer_name
            )
        )
        await session.execute(
            insert(Archive).values(
                id=ARCHIVE, session_id=SESSION, business="wealth", status="complete", chain_index=0
            )
        )


async def _raw_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(text("SELECT * FROM archive_index"))
        return [dict(row._mapping) for row in result]


def _holds(row: dict[str, Any], name: str) -> bool:
    encoded = name.encode("utf-8")
    return any(
        (isinstance(value, str) and name in value)
        or (isinstance(value, bytes | memoryview) and encoded in bytes(value))
        for value in row.values()
    )


async def _found(index: ArchiveIndex, name: str) -> list[tuple[str, str | None]]:
    page = await index.search(SearchQuery(customer_name=name))
    return [(item["archive_id"], item["card_name"]) for item in page.items]


async def test_the_card_name_is_sealed_and_found_by_the_exact_name_only(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await migrate(engine)
    db = session_factory(engine)
    index = _index(db, tmp_path / "keys")
    await _sealed_archive(db, customer_name="李女士")
    await index.record_card(SESSION, {"name": NAME, "id_number": "11010519491231002X"})

    [row] = await _raw_rows(engine)
    assert "card_name" not in row and not _holds(row, NAME)
    assert row["name_hash"] == IdNumberHasher.open(tmp_path / "keys").hash_name(NAME)

    assert await _found(index, NAME) == [(ARCHIVE, NAME)]
    # The same name as an input method or a copy from a document may spell it.
    assert await _found(index, " 李 秀英\u3000") == [(ARCHIVE, NAME)]
    assert await _found(index, "秀英") == []  # a part of the name is no longer searched
    assert await _found(index, "李秀") == []
    assert await _found(index, "李秀英英") == []
    assert await _found(index, "李女") == []  # nor a part of the name the teller typed
    assert await _found(index, "李女士") == [(ARCHIVE, NAME)]
    entry = await index.entry(ARCHIVE)
    assert entry is not None and entry["card_name"] == NAME


def _migration(url: str, file_suffix: str) -> Script:
    """A migration found by its file's name, so that renumbering migrations leaves the test
    alone."""
    scripts = ScriptDirectory.from_config(alembic_config(url)).walk_revisions()
    [found] = [s for s in scripts if s.path.endswith(file_suffix)]
    return found


def _before_sealing(url: str) -> str:
    """The revision before the migration that seals the names."""
    down = _migration(url, "_card_names_sealed.py").down_revision
    assert isinstance(down, str)
    return down


async def _upgrade_to(engine: AsyncEngine, revision: str) -> None:
    def upgrade(connection: Any) -> None:
        config = alembic_config(str(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


async def _before_with_a_clear_name(engine: AsyncEngine) -> None:
    await _upgrade_to(engine, _before_sealing(str(engine.url)))
    await _sealed_archive(session_factory(engine))
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO archive_index (session_id, card_name, id_hash, updated_at) "
                "VALUES (:session, :name, NULL, CURRENT_TIMESTAMP)"
            ),
            {"session": SESSION, "name": NAME},
        )


async def _version(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return str(await connection.scalar(text("SELECT version_num FROM alembic_version")))


async def test_the_migration_seals_the_names_indexed_in_clear(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await _before_with_a_clear_name(engine)
    keys = tmp_path / "keys"
    index = _index(session_factory(engine), keys)  # the keys a worker made at its first start
    # ... and recorded as the deployment's: the migration seals with these very keys.
    recorded = keyring_check_values(keys, IDENTITY_KEYRING) | id_index_check_value(keys)
    async with session_factory(engine)() as session, session.begin():
        session.add_all(
            DeploymentKey(file=file, key_id=key_id, check_value=value, hostname="bank-1")
            for (file, key_id), value in recorded.items()
        )

    await migrate(engine, keys)

    [row] = await _raw_rows(engine)
    assert "card_name" not in row and not _holds(row, NAME)
    assert await _found(index, NAME) == [(ARCHIVE, NAME)]
    assert await _found(index, "秀英") == []


async def test_the_migration_refuses_without_the_deployments_keys_and_changes_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await _before_with_a_clear_name(engine)
    with pytest.raises(MigrationKeysMissing, match="VTELLER_DATA_DIR"):
        await migrate(engine)
    with pytest.raises(MigrationKeysMissing, match="restore the keys directory"):
        await migrate(engine, tmp_path / "no-keys")
    # Keys of another machine than the one that recorded the deployment's.
    _index(session_factory(engine), tmp_path / "other")
    async with session_factory(engine)() as session, session.begin():
        session.add(
            DeploymentKey(file="id-index-key.hex", key_id="", check_value="0" * 16, hostname="b1")
        )
    with pytest.raises(
        DeploymentKeysDiffer, match=re.escape("id-index-key.hex is another key here")
    ):
        await migrate(engine, tmp_path / "other")

    assert await _version(engine) == _before_sealing(str(engine.url))
    [row] = await _raw_rows(engine)
    assert row["card_name"] == NAME and "name_hash" not in row
    # Once the keys are the deployment's, the next start converts it all.
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM deployment_keys"))
    await migrate(engine, tmp_path / "other")
    [row] = await _raw_rows(engine)
    assert "card_name" not in row and not _holds(row, NAME)
    assert await _found(_index(session_factory(engine), tmp_path / "other"), NAME) == [
        (ARCHIVE, NAME)
    ]


async def test_names_hashed_before_the_dots_were_folded_are_found_after_the_migration(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    sealing = _migration(str(engine.url), "_card_names_sealed.py").revision
    await _upgrade_to(engine, sealing)
    keys = tmp_path / "keys"
    db = session_factory(engine)
    index = _index(db, keys)
    recorded = keyring_check_values(keys, IDENTITY_KEYRING) | id_index_check_value(keys)
    async with db() as session, session.begin():
        session.add_all(
            DeploymentKey(file=file, key_id=key_id, check_value=value, hostname="bank-1")
            for (file, key_id), value in recorded.items()
        )
    await _sealed_archive(db)
    # OCR read the name's U+00B7 as a bullet, and the older version hashed the bullet.
    read = "阿卜杜\u2022热合曼"
    await index.record_card(SESSION, {"name": read})
    key = bytes.fromhex((keys / KEY_FILE).read_text())
    unfolded = hmac.new(key, NAME_CONTEXT + read.encode(), hashlib.sha256).hexdigest()
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE archive_index SET name_hash = :h"), {"h": unfolded})
    # Not found by the printed name (searching runs the newest models' query: not at 0016).
    assert unfolded != IdNumberHasher.open(keys).hash_name("阿卜杜·热合曼")

    # Opening the names needs the keys: refused without them, and nothing changes.
    with pytest.raises(MigrationKeysMissing, match=r"computes anew.*VTELLER_DATA_DIR"):
        await migrate(engine)
    assert await _version(engine) == sealing
    await migrate(engine, keys)

    assert await _found(index, "阿卜杜·热合曼") == [(ARCHIVE, read)]
    assert await _found(index, "阿卜杜・热合曼") == [(ARCHIVE, read)]
    [row] = await _raw_rows(engine)
    assert not _holds(row, read)
