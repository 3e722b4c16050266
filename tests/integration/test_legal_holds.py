"""Legal holds reach objects stored after them (a later compliance report), and changes of one
archive's hold wait for each other, against real MinIO."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket
from server.auditor.holds import LegalHolds
from server.db.engine import DbSession
from tests.integration.test_archive_store import bucket, retain_for, store_settings
from tests.support.database import add_session, migrated_database

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
