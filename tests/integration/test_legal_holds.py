"""Legal holds reach objects stored after them (a later compliance report), and changes of one
archive's hold wait for each other (on SQLite and PostgreSQL), against real MinIO."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket
from server.auditor.holds import LegalHolds
from server.db.engine import DbSession, migrate, session_factory
from tests.integration.test_archive_store import bucket, retain_for, store_settings
from tests.support.database import add_session, migrated_database
from tests.support.postgres import fresh_database

__all__ = ["bucket", "store_settings"]  # fixtures

HELD, OTHER = "0190d1e8-5a5b-7c3d-9e4f-a0b1c2d3e4f5", "0190d1e8-5a5b-7c3d-9e4f-a0b1c2d3e4f6"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        await add_session(factory, archives=(HELD, OTHER))
        yield factory


async def _store(bucket: ArchiveBucket, *names: str) -> None:
    for name in names:
        await bucket.put(name, b"{}", retain_for(1))


async def test_an_object_stored_after_the_hold_is_held_with_its_archive(
    bucket: ArchiveBucket, db: async_sessionmaker[DbSession], store_settings: StoreSettings
) -> None:
    holds = LegalHolds(db, bucket)
    held_archive, other = HELD, OTHER
    first = [f"archives/{held_archive}/manifest.json", f"archives/{held_archive}/seg-000000.bin"]
    await _store(bucket, *first, f"archives/{other}/manifest.json")
    names = await holds.objects(held_archive)
    assert sorted(names) == sorted(first)
    await holds.apply(held_archive, names, True, "诉讼保全")
    await holds.record(held_archive, True, "诉讼保全", "u_auditor", len(names))

    report = [f"archives/{held_archive}/report-001.json", f"archives/{held_archive}/report-001.sig"]
    await _store(bucket, *report)
    assert await holds.extend(held_archive, report)
    for name in report:
        hold = await bucket.legal_hold(name)
        assert hold.on and hold.reason == "诉讼保全", name
    assert (await holds.state(held_archive)).objects == 4

    # An archive nobody put under hold: its report is stored as it is.
    later = f"archives/{other}/report-001.json"
    await _store(bucket, later)
    assert not await holds.extend(other, [later])
    assert not (await bucket.legal_hold(later)).on

    # Cleared holds are not extended either.
    await holds.apply(held_archive, [*first, *report], False, "结案")
    await holds.record(held_archive, False, "结案", "u_auditor", 4)
    again = f"archives/{held_archive}/report-002.json"
    await _store(bucket, again)
    assert not await holds.extend(held_archive, [again])
    assert not (await bucket.legal_hold(again)).on


async def test_a_report_written_while_the_hold_is_set_waits_for_it_in_another_worker(
    bucket: ArchiveBucket, db: async_sessionmaker[DbSession], store_settings: StoreSettings
) -> None:
    # Two workers' services on the same database: the auditor's, the report writer's.
    portal, writer = LegalHolds(db, bucket), LegalHolds(db, bucket)
    names = [f"archives/{HELD}/manifest.json", f"archives/{HELD}/seg-000000.bin"]
    report = [f"archives/{HELD}/report-001.json"]
    await _store(bucket, *names)
    async with portal.changing(HELD):
        await portal.apply(HELD, names, True, "诉讼保全")
        # Stored after the hold listed the archive and before it was recorded: the writer
        # would find no hold yet and leave the report as it is, did it not wait.
        await _store(bucket, *report)
        extending = asyncio.create_task(writer.extend(HELD, report))
        async with asyncio.timeout(5), writer.changing(OTHER):
            pass  # another archive's hold is not held up
        await asyncio.sleep(0.5)
        assert not extending.done()
        await portal.record(HELD, True, "诉讼保全", "u_auditor", len(names))
    async with asyncio.timeout(5):
        assert await extending
    hold = await bucket.legal_hold(report[0])
    assert hold.on and hold.reason == "诉讼保全"
    assert (await portal.state(HELD)).objects == 3


async def test_archives_share_a_fixed_set_of_lock_files(
    bucket: ArchiveBucket, db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    holds = LegalHolds(db, bucket)
    for n in range(300):  # every report of every archive extends: one file each would pile up
        async with holds.changing(f"0190d1e8-0000-7000-8000-{n:012d}"):
            pass
    files = list((tmp_path / "db.sqlite.holds").iterdir())
    assert 0 < len(files) <= 256


@pytest.fixture
async def pg_db() -> AsyncIterator[tuple[async_sessionmaker[DbSession], str]]:
    """A migrated PostgreSQL database (and its name) on a pool of two connections: what two
    changes of one archive at once need, if the one that waits holds none."""
    async with fresh_database() as url:
        engine = create_async_engine(url, pool_size=2, max_overflow=0, pool_timeout=10)
        try:
            await migrate(engine)
            yield session_factory(engine), make_url(url).database or ""
        finally:
            await engine.dispose()


async def test_a_change_outlives_the_servers_idle_transaction_timeout_on_postgres(
    bucket: ArchiveBucket, pg_db: tuple[async_sessionmaker[DbSession], str]
) -> None:
    factory, name = pg_db
    # A DBA's setting for every session: transactions idle longer than this are ended.
    async with factory() as session, session.begin():
        await session.execute(
            text(f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '300ms'")
        )
    engine = factory.kw["bind"]
    await engine.dispose()  # new connections, which take the setting
    holds = LegalHolds(factory, bucket)
    async with holds.changing(HELD):
        await asyncio.sleep(1.0)  # the Object Lock calls of a long recording
    async with holds.changing(HELD):  # let go at the end, not at the timeout
        pass


async def test_a_change_waiting_on_postgres_holds_no_connection(
    bucket: ArchiveBucket, pg_db: tuple[async_sessionmaker[DbSession], str]
) -> None:
    factory, _ = pg_db
    first, second = LegalHolds(factory, bucket), LegalHolds(factory, bucket)
    async with first.changing(HELD):  # one of the pool's two connections
        waiting = asyncio.create_task(_changed(second, HELD))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        # The pool's other connection is free for everything else the worker does.
        async with asyncio.timeout(5):
            assert not (await first.state(OTHER)).held
    async with asyncio.timeout(5):
        await waiting


async def _changed(holds: LegalHolds, archive_id: str) -> None:
    async with holds.changing(archive_id):
        pass
