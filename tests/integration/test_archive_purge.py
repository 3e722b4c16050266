"""`vteller archive purge` against a real MinIO, on SQLite and PostgreSQL: what is due goes (every
object version, the identity records and index entries), a tombstone and an audit entry stay,
and nothing retained, held or still under the store's retention is deleted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import (
    MANIFEST_OBJECT,
    SIGNATURE_OBJECT,
    Manifest,
    SegmentEntry,
    manifest_sha256,
)
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.signing import Signer, write_public_key
from recorder.session import archive_prefix
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket, DeleteRefusedError
from server.audit import AuditLog
from server.auditor.config import AuditorConfig
from server.auditor.exporting import ExportSpool
from server.auditor.holds import LegalHolds
from server.auditor.purge import Purger
from server.auditor.service import Actor, AuditorPortal, PortalError
from server.auditor.verification import ArchiveVerifier
from server.auth.principal import Principal, Role
from server.cli import main
from server.db.engine import DbSession, create_engine, session_factory
from server.db.models import (
    Archive,
    ArchiveIndexEntry,
    ArchiveTombstone,
    AuditEntry,
    CallSession,
    IdentityCheck,
    utcnow,
)
from tests.integration.test_archive_store import bucket, retain_for, store_settings
from tests.support.database import TELLER_ID, migrated_database
from tests.support.postgres import fresh_database

__all__ = ["bucket", "store_settings"]  # fixtures

DUE, RETAINED, HELD = (str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3))
SHORT_SECONDS = 3


class Chain:
    """Sealed (empty) archives, each linked to the one before, stored with chosen retention."""

    def __init__(self, tmp_path: Path, db: async_sessionmaker[DbSession], bucket: ArchiveBucket):
        self.keyring = LocalKeyring.open(tmp_path / "keyring.json", create=True)
        self.signer = Signer.open(tmp_path / "signing.pem", create=True)
        self.public_keys = tmp_path / "public"
        self.public_keys.mkdir()
        write_public_key(self.public_keys, self.signer.public_key_pem())
        self.db, self.bucket = db, bucket
        self.head: str | None = None
        self.index = 0

    async def add(self, archive_id: str, session_id: str, retain_until: datetime) -> None:
        sealed = ArchiveSealer(uuid.UUID(archive_id), self.keyring).finish(
            self.signer,
            session_id=session_id,
            business="wealth",
            product=None,
            participants=[],
            marks=[],
            tracks=[],
            status="complete",
            gaps=[],
            identity=None,
            compliance=None,
            recorder_version="test",
            created_at="2025-01-31T08:00:00.000Z",
            finalized_at="2025-01-31T08:10:00.000Z",
            previous_manifest_sha256=self.head,
        )
        prefix = archive_prefix(archive_id)
        await self.bucket.put(prefix + MANIFEST_OBJECT, sealed.data, retain_until)
        await self.bucket.put(prefix + SIGNATURE_OBJECT, sealed.signature, retain_until)
        digest = manifest_sha256(sealed.data)
        async with self.db() as db, db.begin():
            db.add(CallSession(id=session_id, business="wealth", teller_id=TELLER_ID))
            await db.flush()
            db.add(
                Archive(
                    id=archive_id,
                    session_id=session_id,
                    business="wealth",
                    status="sealed",
                    manifest_sha256=digest,
                    previous_sha256=self.head,
                    chain_index=self.index,
                )
            )
        await add_identity(self.db, session_id)
        self.head, self.index = digest, self.index + 1


class NoMedia:
    """The archives here hold no media: only the seal and the chain are checked."""

    def begin_segment(self, segment: SegmentEntry) -> None:
        pass

    def write(self, plaintext: bytes) -> None:
        pass

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        return []


async def add_identity(db: async_sessionmaker[DbSession], session_id: str) -> None:
    async with db() as session, session.begin():
        session.add(
            IdentityCheck(
                id=str(uuid.uuid4()),
                session_id=session_id,
                step="card_front",
                outcome="pass",
                reason="ok",
                key_id="k",
                wrapped_key=b"w",
                sealed=b"sealed card photo",
            )
        )
        session.add(ArchiveIndexEntry(session_id=session_id, id_hash="a" * 64))


async def add_unrecorded(db: async_sessionmaker[DbSession], session_id: str, days: int) -> None:
    ended = utcnow() - timedelta(days=days)
    async with db() as session, session.begin():
        session.add(
            CallSession(
                id=session_id,
                business="wealth",
                teller_id=TELLER_ID,
                state="ended",
                created_at=ended,
                ended_at=ended,
            )
        )
    await add_identity(db, session_id)


def stored_versions(bucket: ArchiveBucket, archive_id: str) -> list[str]:
    return [
        f"{item.object_name}@{item.version_id}"
        for item in bucket.client.list_objects(
            bucket.name, prefix=archive_prefix(archive_id), recursive=True, include_version=True
        )
    ]


async def count(db: async_sessionmaker[DbSession], query: object) -> int:
    async with db() as session:
        return int(await session.scalar(query) or 0)  # type: ignore[call-overload]


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[async_sessionmaker[DbSession]]:
    engine = create_engine(url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def purge(*options: str) -> int:
    """`vteller archive purge`, in a thread: it runs its own event loop."""
    return await asyncio.to_thread(main, ["archive", "purge", *options])


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'var' / 'vteller.db'}"
        return
    async with fresh_database() as url:
        yield url


async def test_due_archives_and_unrecorded_identities_are_purged_and_the_rest_kept(
    tmp_path: Path,
    bucket: ArchiveBucket,
    store_settings: StoreSettings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    monkeypatch.setenv("VTELLER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("VTELLER_DATABASE_URL", database_url)
    monkeypatch.setenv("VTELLER_STORE__BUCKET", bucket.name)
    async with migrated_database(tmp_path / "unused.db", database_url) as db:
        chain = Chain(tmp_path, db, bucket)
        short = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=SHORT_SECONDS)
        await chain.add(DUE, "s_due", short)
        # A second version and a delete marker: a purge deletes versions, not adds markers.
        report = archive_prefix(DUE) + "report-001.json"
        await bucket.put(report, b"{}", short)
        await asyncio.to_thread(bucket.client.remove_object, bucket.name, report)
        await chain.add(RETAINED, "s_retained", retain_for(1))
        await chain.add(HELD, "s_held", short)
        holds = LegalHolds(db, bucket)
        names = await holds.objects(HELD)
        await holds.apply(HELD, names, True, "诉讼保全")
        await holds.record(HELD, True, "诉讼保全", "u_auditor", len(names))
        await add_unrecorded(db, "s_left_early", days=31)
        await add_unrecorded(db, "s_left_today", days=1)
        await add_unrecorded(db, "s_unsealed", days=31)
        async with db() as session, session.begin():
            session.add(Archive(id=str(uuid.uuid4()), session_id="s_unsealed", business="wealth"))
        await asyncio.sleep(SHORT_SECONDS + 1.5)
        before = stored_versions(bucket, DUE)
        assert len(before) == 4  # manifest, signature, report and its delete marker

    # The dry run says what is due and why the rest stays, and deletes nothing.
    assert await purge() == 0
    out = capsys.readouterr().out
    assert f"due   archive {DUE} session s_due product wealth" in out
    assert f"kept  archive {RETAINED}" in out and "retention has not ended" in out
    assert f"kept  archive {HELD}" in out and "legal hold since" in out
    assert "due   identity records (1) of unrecorded session s_left_early" in out
    assert "s_left_today" not in out
    assert "kept  identity records (1) of unrecorded session s_unsealed" in out
    assert "a recording of it was never sealed" in out
    assert "dry run: nothing was deleted" in out
    assert stored_versions(bucket, DUE) == before

    assert await purge("--apply") == 0
    out = capsys.readouterr().out
    assert f"{DUE}: purged 4 object version(s)" in out
    async with opened(database_url) as db:
        assert stored_versions(bucket, DUE) == []
        for kept in (RETAINED, HELD):
            assert len(stored_versions(bucket, kept)) == 2
        kept_sessions = ("s_retained", 1), ("s_held", 1), ("s_left_today", 1), ("s_unsealed", 1)
        for session_id, left in (("s_due", 0), ("s_left_early", 0), *kept_sessions):
            for table in (IdentityCheck, ArchiveIndexEntry):
                query = select(func.count()).where(table.session_id == session_id)
                assert await count(db, query) == left, (session_id, table)
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 4
        async with db() as session:
            tomb = await session.get(ArchiveTombstone, DUE)
            archive = await session.get(Archive, DUE)
            entries = list(
                await session.scalars(
                    select(AuditEntry).where(
                        AuditEntry.action.in_(["archive.purged", "identity.purged"])
                    )
                )
            )
        assert archive is not None and archive.status == "purged"
        assert tomb is not None and tomb.deleted_at is not None
        assert tomb.manifest_sha256 == archive.manifest_sha256 and tomb.objects == 4
        assert tomb.retain_until == short and tomb.deleted_by.startswith("os:")
        assert [(e.action, e.target) for e in entries] == [
            ("archive.purged", DUE),
            ("identity.purged", "s_left_early"),
        ]
        assert all(e.actor == tomb.deleted_by for e in entries)
        assert entries[0].seq == tomb.audit_seq
        assert entries[0].detail["manifest_sha256"] == tomb.manifest_sha256

        # The archive after the purged one still verifies: its link names the tombstone's hash.
        verifier = ArchiveVerifier(db, bucket, chain.keyring, chain.public_keys)
        verified = await verifier.verify(RETAINED, NoMedia())
        assert verified.chain == "purged", verified.view()
        assert verified.ok, verified.view()
        assert any(f"predecessor {DUE} purged on " in note for note in verified.report.notes)

    # A second run finds nothing more to do.
    assert await purge("--apply") == 0
    out = capsys.readouterr().out
    assert "0 archive(s) due" in out and "0 unrecorded session(s) due" in out
    # Known to be retained from the runs before: not asked about again until that date.
    assert f"kept  archive {RETAINED}" in out and "as the store said when last asked" in out
    async with opened(database_url) as db:
        query = select(func.count()).where(AuditEntry.action.like("%.purged"))
        assert await count(db, query) == 2


async def test_the_stores_refusal_stops_a_purge_that_this_machines_clock_thinks_due(
    tmp_path: Path, bucket: ArchiveBucket
) -> None:
    async with migrated_database(tmp_path / "db.sqlite") as db:
        chain = Chain(tmp_path, db, bucket)
        await chain.add(RETAINED, "s1", retain_for(1))
        ahead = Purger(
            db,
            bucket,
            AuditLog(db),
            ExportSpool(tmp_path / "exports"),
            actor="os:test@host",
            unrecorded_retention_days=30,
            now=lambda: utcnow() + timedelta(days=2),  # this machine's clock runs ahead
        )
        (candidate,) = await ahead.archives()
        assert candidate.kept is None  # by this clock it is due
        with pytest.raises(DeleteRefusedError, match=r"WORM|AccessDenied"):
            await ahead.purge_archive(RETAINED, lambda *_: None)
        assert len(stored_versions(bucket, RETAINED)) == 2
        async with db() as session:
            tomb = await session.get(ArchiveTombstone, RETAINED)
            archive = await session.get(Archive, RETAINED)
        assert tomb is not None and tomb.deleted_at is None  # under way, not a tombstone yet
        assert archive is not None and archive.status == "sealed"
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 1


async def test_a_purge_interrupted_midway_is_finished_by_the_next_run(
    tmp_path: Path, bucket: ArchiveBucket
) -> None:
    class Killed(Exception):
        pass

    def killed(*_: object) -> None:
        raise Killed()

    async with migrated_database(tmp_path / "db.sqlite") as db:
        chain = Chain(tmp_path, db, bucket)
        await chain.add(DUE, "s1", retain_for(SHORT_SECONDS / 86400))
        await asyncio.sleep(SHORT_SECONDS + 1.5)
        purger = Purger(
            db,
            bucket,
            AuditLog(db),
            ExportSpool(tmp_path / "exports"),
            actor="os:test@host",
            unrecorded_retention_days=30,
        )
        with pytest.raises(Killed):
            await purger.purge_archive(DUE, killed)  # dies after its first deletion
        async with db() as session:
            tomb = await session.get(ArchiveTombstone, DUE)
        assert tomb is not None and tomb.deleted_at is None
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 1

        (candidate,) = await purger.archives()
        assert candidate.kept is None and candidate.resuming
        result = await purger.purge_archive(DUE, lambda *_: None)
        assert not isinstance(result, str)
        assert stored_versions(bucket, DUE) == []
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 0
        assert await purger.archives() == []
        query = select(func.count()).where(AuditEntry.action == "archive.purged")
        assert await count(db, query) == 1
        # Killed between the deletion and its audit entry: the next run writes the entry.
        async with db() as session, session.begin():
            tomb = await session.get(ArchiveTombstone, DUE)
            assert tomb is not None
            tomb.audit_seq = None
        assert await purger.unaudited() == [DUE]
        assert await count(db, query) == 2
        assert await purger.unaudited() == []

        # The portal says it was purged, rather than verifying an empty archive as lost.
        portal = AuditorPortal(
            AuditorConfig(), db, tmp_path / "data", bucket, chain.keyring, AuditLog(db)
        )
        auditor = Principal(Role.AUDITOR, "a", "csrf", user_id="u_auditor")
        with pytest.raises(
            PortalError, match=r"deleted at the end of its retention on \d{4}-"
        ) as e:
            await portal.open(Actor(auditor, None), DUE)
        assert (e.value.status, e.value.code) == (410, "archive_purged")
