"""`vteller archive purge` against a real MinIO, on SQLite and PostgreSQL: what is due goes (every
object version, the identity records and index entries, and the rest of what the database holds
about the customer), a tombstone and an audit entry stay, nothing retained, held or still under
the store's retention is deleted, and the portal hands out nothing of a purged archive, not even
from a worker's memory or an export written before."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
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
from recorder.seal.signing import Signer, write_public_key
from recorder.session import archive_prefix
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket, DeleteRefusedError
from server.audit import AuditLog
from server.auditor import service
from server.auditor.config import AuditorConfig
from server.auditor.exporting import ExportSpool
from server.auditor.holds import LegalHolds
from server.auditor.playback import View
from server.auditor.purge import NEVER_DELIVERED, Purger
from server.auditor.service import Actor, AuditorPortal, PortalError
from server.auditor.verification import ArchiveVerifier
from server.auth.principal import Principal, Role
from server.cli import main
from server.db.engine import DbSession, create_engine, session_factory
from server.db.models import (
    ERASED,
    Archive,
    ArchiveIndexEntry,
    ArchiveTombstone,
    AuditEntry,
    CallSession,
    IdentityCheck,
    Transaction,
    utcnow,
)
from server.errors import ApiError
from server.workflow.transactions.views import customer_view, staff_view
from server.workflow.webhooks.config import WebhookConfig
from server.workflow.webhooks.records import DeliveryRecords
from tests.integration.test_archive_store import bucket, retain_for, store_settings
from tests.support.archive import seal_empty
from tests.support.customer import (
    ACCOUNT,
    CUSTOMER_NAME,
    NEW_ADDRESS,
    NOTE,
    PHONE_HINT,
    TELLER_NAME,
    CustomerData,
    add_customer_data,
    customer_data,
)
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
        sealed = seal_empty(archive_id, self.keyring, self.signer, session_id, self.head)
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
        await add_customer_data(self.db, session_id, archive_id)
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


async def add_unrecorded(
    db: async_sessionmaker[DbSession], session_id: str, days: int, identity: bool = True
) -> None:
    """A session of a customer that ended `days` ago without a recording, with its customer's
    data and (`identity`) identity records."""
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
    if identity:
        await add_identity(db, session_id)
    await add_customer_data(db, session_id)


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


TRANSACTION_RETENTION_DAYS = 3653


def purger(
    tmp_path: Path,
    db: async_sessionmaker[DbSession],
    bucket: ArchiveBucket,
    now: Callable[[], datetime] = utcnow,
) -> Purger:
    return Purger(
        db,
        bucket,
        AuditLog(db),
        ExportSpool(tmp_path / "data" / "exports"),  # the portal's (`portal`)
        actor="os:test@host",
        unrecorded_retention_days=30,
        transaction_retention_days=TRANSACTION_RETENTION_DAYS,
        now=now,
    )


AUDITOR = Actor(Principal(Role.AUDITOR, "a", "csrf", user_id="u_auditor"), None)


def portal(tmp_path: Path, db: async_sessionmaker[DbSession], chain: Chain) -> AuditorPortal:
    """The auditor portal of a worker whose data directory is `tmp_path / "data"`."""
    write_public_key(tmp_path / "data" / "keys" / "public", chain.signer.public_key_pem())
    return AuditorPortal(
        AuditorConfig(), db, tmp_path / "data", chain.bucket, chain.keyring, AuditLog(db)
    )


def assert_erased(now: CustomerData, before: CustomerData, *, approved: bool) -> None:
    """What `add_customer_data` wrote is erased in `now`, and the facts of `before` are kept;
    `approved`: the approved transactions' personal data too, else they are as `before`."""
    assert now.customer_name == ""
    assert now.participants == [("customer", ERASED), ("teller", TELLER_NAME)]
    assert now.chat == [ERASED] * 2
    assert now.notes == [ERASED] * len(before.notes)
    assert now.callbacks == [("", None)]
    assert now.transactions.keys() == before.transactions.keys()
    for name, paper in now.transactions.items():
        was = before.transactions[name]
        if was.state == "approved" and not approved:
            assert paper == was, name
            continue
        erased: dict[str, object] = {"account": ERASED}
        if "details" in was.content:
            erased["details"] = dict.fromkeys(was.content["details"], ERASED)
        assert paper.content == was.content | erased, name
        assert (paper.signature_sealed, paper.approval_record) == (None, None), name
        assert paper.reasons == [r and ERASED for r in was.reasons], name
        # What happened stays, without whom: the facts an auditor may still be asked about.
        kept = ("state", "sha256", "amount_minor", "signature_sha256", "approval_signature")
        assert [getattr(paper, f) for f in kept] == [getattr(was, f) for f in kept], name
        if was.delivery is not None:
            assert paper.delivery is not None
            delivered = was.delivery[0] == "delivered"
            assert paper.delivery == (
                ("delivered", "", None) if delivered else ("failed", "", NEVER_DELIVERED)
            ), name
    if approved:
        for personal in (CUSTOMER_NAME, ACCOUNT, NEW_ADDRESS):
            assert personal not in repr(now), personal


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
        await add_unrecorded(db, "s_left_unchecked", days=31, identity=False)
        await add_unrecorded(db, "s_left_today", days=1)
        await add_unrecorded(db, "s_unsealed", days=31)
        async with db() as session, session.begin():
            session.add(Archive(id=str(uuid.uuid4()), session_id="s_unsealed", business="wealth"))
        await asyncio.sleep(SHORT_SECONDS + 1.5)
        before = stored_versions(bucket, DUE)
        assert len(before) == 4  # manifest, signature, report and its delete marker
        erased = ("s_due", "s_left_early", "s_left_unchecked")
        sessions = (*erased, "s_retained", "s_held", "s_left_today", "s_unsealed")
        data = {session_id: await customer_data(db, session_id) for session_id in sessions}
        for session_id, held in data.items():
            for personal in (CUSTOMER_NAME, ACCOUNT, NEW_ADDRESS, PHONE_HINT, "sealed signature"):
                assert personal in repr(held), (session_id, personal)
        assert all(NOTE in data[s].notes for s in ("s_due", "s_retained", "s_held"))

    # The dry run says what is due and why the rest stays, and deletes nothing.
    assert await purge() == 0
    out = capsys.readouterr().out
    assert f"due   archive {DUE} session s_due product wealth" in out
    assert f"kept  archive {RETAINED}" in out and "retention has not ended" in out
    assert f"kept  archive {HELD}" in out and "legal hold since" in out
    assert "due   customer data of unrecorded session s_left_early (1 identity record(s))" in out
    assert "due   customer data of unrecorded session s_left_unchecked (0 identity" in out
    assert "s_left_today" not in out
    assert "kept  customer data of unrecorded session s_unsealed (1 identity record(s))" in out
    assert "a recording of it was never sealed" in out
    assert "dry run: nothing was deleted" in out
    assert stored_versions(bucket, DUE) == before

    assert await purge("--apply") == 0
    out = capsys.readouterr().out
    assert f"{DUE}: purged 4 object version(s)" in out
    assert "erased the customer data of unrecorded session s_left_unchecked, 0 identity" in out
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
        # The rest of what the database held about these customers is erased with them, also
        # of the one never asked for an ID; an unrecorded session's approved transactions are
        # the bank's records, under their own retention. Nothing of the customers whose data is
        # kept changed.
        assert_erased(await customer_data(db, "s_due"), data["s_due"], approved=True)
        for session_id in ("s_left_early", "s_left_unchecked"):
            now = await customer_data(db, session_id)
            assert_erased(now, data[session_id], approved=False)
        for session_id in ("s_retained", "s_held", "s_left_today", "s_unsealed"):
            assert await customer_data(db, session_id) == data[session_id], session_id
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
            ("identity.purged", "s_left_unchecked"),
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
        assert await count(db, query) == 3


async def test_an_unrecorded_sessions_approved_transactions_go_when_their_retention_ends(
    tmp_path: Path, bucket: ArchiveBucket, database_url: str
) -> None:
    async with migrated_database(tmp_path / "unused.db", database_url) as db:
        await add_unrecorded(db, "s_service", days=31)
        before = await customer_data(db, "s_service")
        approved = sum(paper.state == "approved" for paper in before.transactions.values())
        assert approved > 0
        # 30 days on: the customer's data goes, the approved transactions (the bank's records
        # of what was done) stay whole, and the session is not listed again meanwhile.
        today = purger(tmp_path, db, bucket)
        [due] = await today.unrecorded()
        assert (due.records, due.transactions, due.kept) == (1, 0, None)
        assert await today.purge_session(due) == 1
        erased = await customer_data(db, "s_service")
        assert_erased(erased, before, approved=False)
        assert await today.unrecorded() == []
        # Once the session ended more than transaction_retention_days ago, they go too.
        almost = timedelta(days=TRANSACTION_RETENTION_DAYS - 32)
        assert await purger(tmp_path, db, bucket, lambda: utcnow() + almost).unrecorded() == []
        later = purger(tmp_path, db, bucket, lambda: utcnow() + almost + timedelta(days=2))
        [due] = await later.unrecorded()
        assert (due.session_id, due.records, due.transactions) == ("s_service", 0, approved)
        assert await later.purge_session(due) == 0
        assert_erased(await customer_data(db, "s_service"), before, approved=True)
        assert await later.unrecorded() == []
        async with db() as session:
            entries = list(
                await session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.action == "identity.purged")
                    .order_by(AuditEntry.seq)
                )
            )
        assert [e.detail["transactions"] for e in entries] == [0, approved]


async def test_the_stores_refusal_stops_a_purge_that_this_machines_clock_thinks_due(
    tmp_path: Path, bucket: ArchiveBucket
) -> None:
    async with migrated_database(tmp_path / "db.sqlite") as db:
        chain = Chain(tmp_path, db, bucket)
        await chain.add(RETAINED, "s1", retain_for(1))
        # This machine's clock runs ahead.
        ahead = purger(tmp_path, db, bucket, lambda: utcnow() + timedelta(days=2))
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
        purging = purger(tmp_path, db, bucket)
        with pytest.raises(Killed):
            await purging.purge_archive(DUE, killed)  # dies after its first deletion
        async with db() as session:
            tomb = await session.get(ArchiveTombstone, DUE)
        assert tomb is not None and tomb.deleted_at is None
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 1
        before = await customer_data(db, "s1")
        assert before.customer_name == CUSTOMER_NAME

        # While it is under way, the portal hands out nothing of it.
        auditor = portal(tmp_path, db, chain)
        with pytest.raises(PortalError, match=r"deleted at the end of its retention;") as e:
            await auditor.open(AUDITOR, DUE)
        assert (e.value.status, e.value.code) == (410, "archive_purged")

        (candidate,) = await purging.archives()
        assert candidate.kept is None and candidate.resuming
        result = await purging.purge_archive(DUE, lambda *_: None)
        assert not isinstance(result, str)
        assert stored_versions(bucket, DUE) == []
        assert await count(db, select(func.count()).select_from(IdentityCheck)) == 0
        assert_erased(await customer_data(db, "s1"), before, approved=True)
        # Shown as erased, not masked into something like an account; nothing left to send.
        async with db() as session:
            service_row = await session.get(Transaction, "t_s1_service")
        assert service_row is not None
        assert staff_view(service_row)["transaction"]["account"] == ERASED
        assert customer_view(service_row)["transaction"]["account"] == ERASED
        records = DeliveryRecords(WebhookConfig(url="https://core.bank.test/"), db, AuditLog(db))
        with pytest.raises(ApiError) as refused:
            await records.retry("t_s1_service", actor="system", actor_role="system", via="cli")
        assert (refused.value.status, refused.value.code) == (409, "delivery_purged")
        assert await purging.archives() == []
        query = select(func.count()).where(AuditEntry.action == "archive.purged")
        assert await count(db, query) == 1
        # Killed between the deletion and its audit entry: the next run writes the entry.
        async with db() as session, session.begin():
            tomb = await session.get(ArchiveTombstone, DUE)
            assert tomb is not None
            tomb.audit_seq = None
        assert await purging.unaudited() == [DUE]
        assert await count(db, query) == 2
        assert await purging.unaudited() == []

        # The portal says it was purged, rather than verifying an empty archive as lost.
        with pytest.raises(
            PortalError, match=r"deleted at the end of its retention on \d{4}-"
        ) as e:
            await auditor.open(AUDITOR, DUE)
        assert (e.value.status, e.value.code) == (410, "archive_purged")


async def test_a_purged_archive_is_neither_played_from_memory_nor_downloaded_after(
    tmp_path: Path, bucket: ArchiveBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The archives here hold no media: what the remux would make of them is made up.
    views = [View("customer", b"customer webm", 1000), View("teller", b"teller webm", 1000)]
    monkeypatch.setattr(service, "remux_views", lambda recording: views)
    async with migrated_database(tmp_path / "db.sqlite") as db:
        chain = Chain(tmp_path, db, bucket)
        await chain.add(DUE, "s1", retain_for(SHORT_SECONDS / 86400))
        auditor = portal(tmp_path, db, chain)
        # Played and exported while it was retained: kept in this worker's memory for the
        # playback TTL, and a written package waiting for its download.
        prepared = await auditor.play(AUDITOR, DUE)
        assert sorted(prepared.views) == ["customer", "teller"]
        assert await auditor.media(AUDITOR, DUE, "customer") == b"customer webm"
        token, package = await auditor.export(AUDITOR, DUE)
        assert package.path.exists()
        await asyncio.sleep(SHORT_SECONDS + 1.5)

        # Another process purges it (and sweeps the spool, which leaves a package held).
        result = await purger(tmp_path, db, bucket).purge_archive(DUE, lambda *_: None)
        assert not isinstance(result, str)
        assert package.path.exists()

        with pytest.raises(PortalError) as e:
            await auditor.media(AUDITOR, DUE, "customer")
        assert (e.value.status, e.value.code) == (410, "archive_purged")
        assert auditor._playback.get(DUE) is None  # dropped from memory, not left to expire
        for refused in (auditor.play(AUDITOR, DUE), auditor.media(AUDITOR, DUE, "teller")):
            with pytest.raises(PortalError) as e:
                await refused
            assert (e.value.status, e.value.code) == (410, "archive_purged")
        with pytest.raises(PortalError) as e:
            async with auditor.download(AUDITOR, token):
                raise AssertionError("a package of a purged archive was handed out")
        assert (e.value.status, e.value.code) == (410, "archive_purged")
        assert not package.path.parent.exists()  # deleted with its refusal
        async with db() as session:
            actions = list(await session.scalars(select(AuditEntry.action)))
        assert actions.count("auditor.played") == 1 and "auditor.exported" not in actions
