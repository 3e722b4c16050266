"""Deleting personal information when its retention ends (PIPL art. 19 and 47): sealed archives
whose COMPLIANCE retention has ended in the store, with what the database holds about their
customer, and the identity records (with the rest of the customer's data) of sessions that were
never recorded. What is erased and what is kept, column by column, is in docs/deployment.md,
"What a purge erases, and what it keeps".

The store decides, not the database: an archive is due only when every version of every one of
its objects has a retain-until in the past and no legal hold, as the store reports them, and the
store's refusal to delete (its own clock) is the last guard. What stays is a tombstone
(`ArchiveTombstone`): the chain of manifests stays verifiable across the gap, and the audit log
shows the deletion (`archive.purged`). docs/archive-format.md, "Tombstones".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import structlog
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased

from recorder.seal.canonical import canonical_json
from recorder.seal.manifest import MANIFEST_OBJECT
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, StoredVersion, VersionLock
from server.audit import SYSTEM, AuditLog
from server.auditor.exporting import ExportSpool
from server.auditor.holds import PARALLEL_CALLS, LegalHolds, SessionHolds
from server.db.engine import DbSession
from server.db.models import (
    ERASED,
    Archive,
    ArchiveIndexEntry,
    ArchiveProduct,
    ArchiveTombstone,
    CallSession,
    ChatMessage,
    ComplianceReview,
    IdentityCheck,
    LegalHoldRecord,
    Participant,
    QueueCallback,
    QueueTicket,
    SessionHoldRecord,
    Transaction,
    TransactionDecision,
    User,
    WebhookDelivery,
    utcnow,
)
from server.workflow.webhooks.records import DELIVERED, FAILED

log = structlog.get_logger(__name__)

PURGED = "purged"  # Archive.status once its objects and personal data are gone

Progress = Callable[[str, int, int], None]  # (archive id, versions deleted, versions in all)


class PurgeError(Exception):
    """One archive could not be purged this time; the next run tries again."""


@dataclass(frozen=True)
class ArchiveCandidate:
    archive_id: str
    session_id: str
    product: str
    retain_until: datetime | None  # the latest of its objects', as the store holds them
    size: int | None  # None: not asked (known to be retained from an earlier run)
    versions: int | None
    kept: str | None  # why it stays; None: due
    resuming: bool  # an earlier run began deleting it


@dataclass(frozen=True)
class SessionCandidate:
    session_id: str
    ended_at: datetime
    records: int
    kept: str | None
    # Approved transactions erased with the rest: those of a session that ended more than
    # `transaction_retention_days` ago (0 before: they stay whole).
    transactions: int = 0


@dataclass(frozen=True)
class IdentityAttempt:
    step: str
    outcome: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class SessionEvidence:
    """What an auditor is shown of a session before holding it: never the customer's data."""

    session_id: str
    business: str
    state: str
    created_at: datetime
    ended_at: datetime | None
    sealed_archives: list[str]  # not purged as unrecorded: its archives are held instead
    erased: bool  # its customer's data is gone: nothing is left to hold
    attempts: list[IdentityAttempt]


@dataclass(frozen=True)
class Purged:
    archive_id: str
    objects: int
    bytes: int
    audit_seq: int


class Purger:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        bucket: ArchiveBucket,
        audit: AuditLog,
        exports: ExportSpool,
        *,
        actor: str,
        unrecorded_retention_days: int,
        transaction_retention_days: int,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._bucket = bucket
        self._audit = audit
        self._exports = exports
        self._holds = LegalHolds(db, bucket)
        self._session_holds = SessionHolds(db)
        self._actor = actor
        self._unrecorded = timedelta(days=unrecorded_retention_days)
        self._transactions = timedelta(days=transaction_retention_days)
        self._now = now
        self._calls = asyncio.Semaphore(PARALLEL_CALLS)

    # -- what is due ---------------------------------------------------------------------------

    async def archives(
        self, checked: Callable[[int, int], None] | None = None
    ) -> list[ArchiveCandidate]:
        """Every sealed archive not purged yet, due or kept (and why), in chain order.
        `checked(done, total)` is called after each one."""
        now = self._now()
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(
                        Archive.id,
                        Archive.session_id,
                        func.coalesce(ArchiveProduct.product, Archive.business),
                        Archive.retained_until,
                        ArchiveTombstone.archive_id,
                    )
                    .outerjoin(ArchiveProduct, ArchiveProduct.archive_id == Archive.id)
                    .outerjoin(ArchiveTombstone, ArchiveTombstone.archive_id == Archive.id)
                    .where(Archive.chain_index.is_not(None), Archive.status != PURGED)
                    .order_by(Archive.chain_index)
                )
            ).all()
        candidates = []
        for number, (archive_id, session_id, product, known, resuming) in enumerate(rows, 1):
            if known is not None and known > now and resuming is None:
                candidate = ArchiveCandidate(
                    archive_id,
                    session_id,
                    product,
                    known,
                    None,
                    None,
                    f"retention has not ended (until {known:%Y-%m-%d %H:%M:%S} UTC, as the "
                    "store said when last asked)",
                    False,
                )
            else:
                candidate = await self._candidate(
                    archive_id, session_id, product, resuming is not None
                )
                if candidate.retain_until is not None and candidate.retain_until != known:
                    async with self._db() as db, db.begin():
                        row = await db.get(Archive, archive_id)
                        if row is not None:
                            row.retained_until = candidate.retain_until
            candidates.append(candidate)
            if checked is not None:
                checked(number, len(rows))
        return candidates

    async def _candidate(
        self, archive_id: str, session_id: str, product: str, resuming: bool
    ) -> ArchiveCandidate:
        versions = await self._bucket.versions(archive_prefix(archive_id))
        stored = [v for v in versions if not v.delete_marker]
        size = sum(v.size for v in stored)

        def result(kept: str | None, until: datetime | None = None) -> ArchiveCandidate:
            return ArchiveCandidate(
                archive_id, session_id, product, until, size, len(versions), kept, resuming
            )

        async with self._db() as db:
            hold = await db.get(LegalHoldRecord, archive_id)
        if hold is not None and hold.held:
            return result(_held_since(hold.changed_at, hold.reason))
        if not stored and not resuming:
            return result(
                "nothing of it is in the store: its upload may still be pending "
                "(vteller serve's spool uploads it)"
            )
        # The manifest's lock first: a retained archive (nearly all of them) costs two requests.
        manifest = [v for v in stored if v.name.endswith("/" + MANIFEST_OBJECT)]
        if manifest and (kept := _why_kept(await self._locks(manifest), self._now())):
            return result(kept[0], kept[1])
        locks = await self._locks(stored)
        if kept := _why_kept(locks, self._now()):
            return result(kept[0], kept[1])
        dates = [lock.retain_until for lock in locks if lock.retain_until is not None]
        return result(None, max(dates) if dates else None)

    async def _locks(self, versions: list[StoredVersion]) -> list[VersionLock]:
        async def one(version: StoredVersion) -> VersionLock:
            async with self._calls:
                return await self._bucket.version_lock(version.name, version.version_id)

        return list(await asyncio.gather(*(one(v) for v in versions)))

    async def unrecorded(self) -> list[SessionCandidate]:
        """Sessions without a sealed archive, ended more than `unrecorded_retention_days` ago,
        that still hold identity records or other data of their customer (`_erase_session` has
        not erased them yet), or approved transactions once `transaction_retention_days` have
        passed too; kept when under legal hold or with a recording not sealed yet."""
        now = self._now()
        cutoff = now - self._unrecorded
        transactions_cutoff = now - self._transactions
        ended = _ended()
        unsealed = select(Archive.id).where(
            Archive.session_id == CallSession.id, Archive.chain_index.is_(None)
        )
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(
                        CallSession.id,
                        ended,
                        func.count(IdentityCheck.id),
                        unsealed.exists(),
                        SessionHoldRecord.changed_at,
                        SessionHoldRecord.reason,
                    )
                    .outerjoin(IdentityCheck, IdentityCheck.session_id == CallSession.id)
                    .outerjoin(
                        SessionHoldRecord,
                        and_(
                            SessionHoldRecord.session_id == CallSession.id,
                            SessionHoldRecord.held.is_(True),
                        ),
                    )
                    .where(
                        ~_sealed(),
                        ended < cutoff,
                        or_(
                            _not_erased(),
                            and_(
                                ended < transactions_cutoff,
                                select(Transaction.id)
                                .where(
                                    Transaction.session_id == CallSession.id,
                                    _approved_not_erased(),
                                )
                                .correlate(CallSession)
                                .exists(),
                            ),
                        ),
                    )
                    .group_by(
                        CallSession.id,
                        ended,
                        SessionHoldRecord.changed_at,
                        SessionHoldRecord.reason,
                    )
                    .order_by(ended)
                )
            ).all()
            expired = [session_id for session_id, at, *_ in rows if at < transactions_cutoff]
            counted = await db.execute(
                select(Transaction.session_id, func.count())
                .where(_approved_not_erased(), Transaction.session_id.in_(expired))
                .group_by(Transaction.session_id)
            )
            approved: dict[str, int] = {session_id: n for session_id, n in counted}
        return [
            SessionCandidate(
                session_id,
                at,
                count,
                _session_kept(recording, held_at, reason),
                approved.get(session_id, 0),
            )
            for session_id, at, count, recording, held_at, reason in rows
        ]

    # -- deleting ------------------------------------------------------------------------------

    async def purge_archive(self, archive_id: str, progress: Progress) -> Purged | str:
        """Delete one due archive; what stays in its place is its tombstone. Returns why it is
        kept if it is no longer due (a hold set since); raises PurgeError when the store refuses
        (DeleteRefusedError) or objects remain, ArchiveUnavailableError when it is down."""
        # A hold being set now waits for this purge, and this purge for a hold being set.
        async with self._holds.changing(archive_id):
            async with self._db() as db:
                row = await db.get(Archive, archive_id)
                product = await db.get(ArchiveProduct, archive_id)
                tomb = await db.get(ArchiveTombstone, archive_id)
            if row is None or row.status == PURGED:
                return "already purged"
            fresh = await self._candidate(
                archive_id,
                row.session_id,
                product.product if product else row.business,
                tomb is not None,
            )
            if fresh.kept is not None:
                return fresh.kept
            versions = await self._bucket.versions(archive_prefix(archive_id))
            if tomb is None:
                async with self._db() as db, db.begin():
                    db.add(
                        ArchiveTombstone(
                            archive_id=archive_id,
                            session_id=row.session_id,
                            manifest_sha256=row.manifest_sha256,
                            previous_sha256=row.previous_sha256,
                            chain_index=row.chain_index,
                            # None only when resuming with everything gone, never for a new one.
                            retain_until=fresh.retain_until or utcnow(),
                            deleted_by=self._actor,
                            objects=len(versions),
                            bytes=fresh.size or 0,
                        )
                    )
            await self._delete(archive_id, versions, progress)
            left = await self._bucket.versions(archive_prefix(archive_id))
            if left:
                raise PurgeError(
                    f"{len(left)} object version(s) of {archive_id} appeared while it was "
                    "being purged; run the purge again"
                )
            return await self._finish(archive_id, row.session_id)

    async def _delete(
        self, archive_id: str, versions: list[StoredVersion], progress: Progress
    ) -> None:
        done = 0
        total = len(versions)

        async def one(version: StoredVersion) -> None:
            nonlocal done
            async with self._calls:
                await self._bucket.delete_version(version.name, version.version_id)
            done += 1
            progress(archive_id, done, total)

        # The manifest and its signature last: while anything of the archive is left, what is
        # left still says what it was.
        last = [v for v in versions if "/manifest." in v.name]
        # Every deletion ends before this returns or raises: none goes on unseen behind a refusal.
        results = await asyncio.gather(
            *(one(v) for v in versions if v not in last), return_exceptions=True
        )
        if failed := next((r for r in results if isinstance(r, BaseException)), None):
            raise failed
        for version in last:
            await one(version)

    async def _finish(self, archive_id: str, session_id: str) -> Purged:
        async with self._db() as db, db.begin():
            archive = await db.get(Archive, archive_id)
            tomb = await db.get(ArchiveTombstone, archive_id)
            assert archive is not None and tomb is not None  # both read under the lock above
            archive.status = PURGED
            others = await db.scalar(
                select(func.count()).where(
                    Archive.session_id == session_id,
                    Archive.id != archive_id,
                    # Sealed ones only: a recording never sealed is never purged either.
                    Archive.chain_index.is_not(None),
                    Archive.status != PURGED,
                )
            )
            records = 0
            if not others:
                # What the database holds about the customer describes the session, which the
                # last of its recordings leaves with (its transactions too: their retention is
                # the recording's, which the product's regulator sets).
                records = await _erase_session(db, session_id, approved=True)
            if tomb.deleted_at is None:
                tomb.deleted_at = utcnow()
                tomb.deleted_by = self._actor
        await asyncio.to_thread(self._exports.sweep)
        log.info(
            "archive_purged",
            archive_id=archive_id,
            session_id=session_id,
            objects=tomb.objects,
            bytes=tomb.bytes,
            identity_records=records,
        )
        seq = await self._audited(tomb, records)
        return Purged(archive_id, tomb.objects, tomb.bytes, seq)

    async def _audited(self, tomb: ArchiveTombstone, records: int | None) -> int:
        entry = await self._audit.append(
            "archive.purged",
            actor=self._actor,
            actor_role=SYSTEM,
            target=tomb.archive_id,
            detail={
                "session_id": tomb.session_id,
                "manifest_sha256": tomb.manifest_sha256,
                "retain_until": tomb.retain_until.isoformat(),
                "deleted_at": tomb.deleted_at.isoformat() if tomb.deleted_at else None,
                "objects": tomb.objects,
                "bytes": tomb.bytes,
                "identity_records": records,
            },
        )
        async with self._db() as db, db.begin():
            row = await db.get(ArchiveTombstone, tomb.archive_id)
            if row is not None:
                row.audit_seq = entry.seq
        return entry.seq

    async def unaudited(self) -> list[str]:
        """Log the purges an interrupted run finished but did not log yet; their archive ids."""
        async with self._db() as db:
            tombs = list(
                await db.scalars(
                    select(ArchiveTombstone).where(
                        ArchiveTombstone.deleted_at.is_not(None),
                        ArchiveTombstone.audit_seq.is_(None),
                    )
                )
            )
        for tomb in tombs:
            await self._audited(tomb, None)  # how many records went is not known any more
        return [tomb.archive_id for tomb in tombs]

    async def purge_session(self, candidate: SessionCandidate) -> int | str:
        """Delete an unrecorded session's identity records (and its index entry, if any) and
        erase the rest of what the database holds about its customer, but for its approved
        transactions; logged first, so that no deletion is ever missing from the audit log (an
        interrupted run may log one twice). Returns how many identity records went, or why the
        session is kept if a legal hold was set on it since it was listed."""
        # A hold being set now waits for this purge (and then finds nothing left to hold), and
        # this purge for a hold being set (and then keeps the session).
        async with self._session_holds.changing(candidate.session_id):
            hold = await self._session_holds.state(candidate.session_id)
            if hold.held:
                return _held_since(hold.changed_at, hold.reason)
            return await self._erase_unrecorded(candidate)

    async def _erase_unrecorded(self, candidate: SessionCandidate) -> int:
        await self._audit.append(
            "identity.purged",
            actor=self._actor,
            actor_role=SYSTEM,
            target=candidate.session_id,
            detail={
                "records": candidate.records,
                "ended_at": candidate.ended_at.isoformat(),
                "retention_days": self._unrecorded.days,
                "transactions": candidate.transactions,
            },
        )
        async with self._db() as db, db.begin():
            # An approved transaction of a session without a recording (a service, or a product
            # that needs none) is a record of the bank's own, kept under its retention for
            # transaction records (`transaction_retention_days`), not this one: it stays whole
            # until that has passed too.
            records = await _erase_session(
                db, candidate.session_id, approved=candidate.transactions > 0
            )
        log.info("identity_purged", session_id=candidate.session_id, identity_records=records)
        return records


async def session_evidence(
    db: async_sessionmaker[DbSession], session_id: str
) -> SessionEvidence | None:
    """The session's facts as `unrecorded` judges them, or None if there is no such session."""
    async with db() as session:
        row = await session.get(CallSession, session_id)
        if row is None:
            return None
        sealed = await session.scalars(
            select(Archive.id)
            .where(Archive.session_id == session_id, Archive.chain_index.is_not(None))
            .order_by(Archive.chain_index)
        )
        held = await session.scalar(
            select(CallSession.id).where(CallSession.id == session_id, _not_erased())
        )
        attempts = await session.execute(
            select(
                IdentityCheck.step, IdentityCheck.outcome, IdentityCheck.reason, IdentityCheck.at
            )
            .where(IdentityCheck.session_id == session_id)
            .order_by(IdentityCheck.at)
        )
        return SessionEvidence(
            row.id,
            row.business,
            row.state,
            row.created_at,
            row.ended_at,
            list(sealed),
            held is None,
            [IdentityAttempt(*attempt) for attempt in attempts],
        )


FAIL = "fail"  # IdentityCheck.outcome of a failed attempt (else "pass")


@dataclass(frozen=True)
class UnrecordedQuery:
    """What the auditors' list of sessions never recorded is asked for (docs/auditor.md
    section 6). `date_from`, `date_to`: UTC days (inclusive) of the moment the retention runs
    from (the session's end; its start while it never ended). `identity`: `failed`, `passed`,
    `none` or `all` (`UnrecordedSession.identity`)."""

    date_from: date | None = None
    date_to: date | None = None
    identity: str = "all"
    limit: int = 50  # the API's bounds: server/api/bodies.py


@dataclass(frozen=True)
class UnrecordedSession:
    """A session the purge erases as never recorded once its retention ends, as the auditors'
    list shows it: who, when, how its identity checks ended, its hold; never the customer's
    data nor the checks' evidence."""

    session_id: str
    business: str
    state: str
    teller: tuple[str, str, str]  # id, username, display name
    created_at: datetime
    ended_at: datetime | None
    purge_after: datetime  # the first purge after this erases it, unless held (or recording)
    held: bool
    steps: list[IdentityAttempt]  # each step's last attempt, oldest first

    @property
    def identity(self) -> str:
        """`failed`: a step's last attempt failed; `passed`: none did; `none`: never checked.
        As `_identity_failed` judges it in the database."""
        if not self.steps:
            return "none"
        return "failed" if any(step.outcome == FAIL for step in self.steps) else "passed"


async def unrecorded_sessions(
    db: async_sessionmaker[DbSession], query: UnrecordedQuery, retention_days: int
) -> tuple[list[UnrecordedSession], bool]:
    """The sessions `Purger.unrecorded` chooses from, whatever their age: without a sealed
    archive, their customer's data not erased yet; newest first, at most `query.limit`, and
    whether more matched. `retention_days`: `identity.unrecorded_retention_days`."""
    ended = _ended()
    conditions = [~_sealed(), _not_erased()]
    if query.date_from is not None:
        conditions.append(ended >= datetime.combine(query.date_from, time(), UTC))
    if query.date_to is not None:
        conditions.append(ended < datetime.combine(query.date_to + timedelta(days=1), time(), UTC))
    if query.identity == "failed":
        conditions.append(_identity_failed())
    elif query.identity == "passed":
        conditions += [_identity_checked(), ~_identity_failed()]
    elif query.identity == "none":
        conditions.append(~_identity_checked())
    async with db() as session:
        rows = (
            await session.execute(
                select(
                    CallSession.id,
                    CallSession.business,
                    CallSession.state,
                    User.id.label("teller_id"),
                    User.username,
                    User.display_name,
                    CallSession.created_at,
                    CallSession.ended_at,
                    ended.label("ended"),
                    SessionHoldRecord.held,
                )
                .join(User, User.id == CallSession.teller_id)
                .outerjoin(SessionHoldRecord, SessionHoldRecord.session_id == CallSession.id)
                .where(*conditions)
                .order_by(ended.desc(), CallSession.id)
                .limit(query.limit + 1)
            )
        ).all()
        listed = rows[: query.limit]
        attempts = (
            await session.execute(
                select(
                    IdentityCheck.session_id,
                    IdentityCheck.step,
                    IdentityCheck.outcome,
                    IdentityCheck.reason,
                    IdentityCheck.at,
                )
                .where(IdentityCheck.session_id.in_([row.id for row in listed]))
                # Of a step's attempts at the same instant, the failure is taken as the last
                # one ("pass" > "fail"), as `_identity_failed` does.
                .order_by(IdentityCheck.at, IdentityCheck.outcome.desc())
            )
        ).all()
    last: dict[str, dict[str, IdentityAttempt]] = {}
    for session_id, step, outcome, reason, at in attempts:
        steps = last.setdefault(session_id, {})
        steps.pop(step, None)  # listed where its last attempt came
        steps[step] = IdentityAttempt(step, outcome, reason, at)
    retention = timedelta(days=retention_days)
    found = [
        UnrecordedSession(
            row.id,
            row.business,
            row.state,
            (row.teller_id, row.username, row.display_name),
            row.created_at,
            row.ended_at,
            row.ended + retention,
            bool(row.held),
            list(last.get(row.id, {}).values()),
        )
        for row in listed
    ]
    return found, len(rows) > query.limit


async def tombstone(db: async_sessionmaker[DbSession], archive_id: str) -> ArchiveTombstone | None:
    async with db() as session:
        return await session.get(ArchiveTombstone, archive_id)


def _why_kept(locks: list[VersionLock], now: datetime) -> tuple[str, datetime | None] | None:
    """Why objects with these locks must stay (and until when), or None if none must."""
    if not locks:
        return None
    if held := sum(lock.held for lock in locks):
        return f"legal hold on {held} object(s) in the store", None
    if any(lock.retain_until is None for lock in locks):
        return (
            "an object has no retention date in the store, so nothing says when it may go: "
            "compare it with the manifest and delete it by hand if it is due",
            None,
        )
    until = max(lock.retain_until for lock in locks if lock.retain_until is not None)
    if until > now:
        return f"retention has not ended (until {until:%Y-%m-%d %H:%M:%S} UTC)", until
    return None


def _held_since(changed_at: datetime | None, reason: str | None) -> str:
    """Why an archive or session under legal hold is kept, in `vteller archive purge`'s list."""
    since = f"{changed_at:%Y-%m-%d}" if changed_at is not None else "?"
    return f"legal hold since {since} ({reason})"


def _session_kept(recording: bool, held_at: datetime | None, reason: str | None) -> str | None:
    """Why an unrecorded session past its retention is kept, or None if it is due."""
    if held_at is not None:
        return _held_since(held_at, reason)
    if recording:
        # A recording the spool may still seal (after a worker's restart): its identity records
        # and its customer's data then belong with it, so they stay under it.
        return (
            "a recording of it was never sealed: check the worker's spool "
            "(docs/deployment.md) before its customer's data is erased"
        )
    return None


def _sealed() -> ColumnElement[bool]:
    """The session (CallSession in the enclosing query) has a sealed archive: its identity
    records and customer data go with the archive, at the end of its retention, never as an
    unrecorded session's."""
    return (
        select(Archive.id)
        .where(Archive.session_id == CallSession.id, Archive.chain_index.is_not(None))
        .exists()
    )


def _ended() -> ColumnElement[datetime]:
    """When an unrecorded session's retention runs from: its end, or its creation if it never
    ended (left waiting for a customer, or cut off)."""
    return func.coalesce(CallSession.ended_at, CallSession.created_at)


def _identity_checked() -> ColumnElement[bool]:
    """The session (CallSession in the enclosing query) holds identity records."""
    # Correlated to the session only: an enclosing query may join identity_checks itself.
    return (
        select(IdentityCheck.id)
        .where(IdentityCheck.session_id == CallSession.id)
        .correlate(CallSession)
        .exists()
    )


def _identity_failed() -> ColumnElement[bool]:
    """The last attempt of one of the session's identity steps failed: a retry that passed
    makes up for a failure, but a teller's manual verification is a step of its own, so a
    manual pass does not hide a face that did not match the card."""
    attempt, later = aliased(IdentityCheck), aliased(IdentityCheck)
    return (
        select(attempt.id)
        .where(
            attempt.session_id == CallSession.id,
            attempt.outcome == FAIL,
            ~select(later.id)
            .where(
                later.session_id == attempt.session_id,
                later.step == attempt.step,
                later.at > attempt.at,
            )
            .exists(),
        )
        .correlate(CallSession)
        .exists()
    )


def _not_erased() -> ColumnElement[bool]:
    """The session (CallSession in the enclosing query) holds something of its customer that
    `_erase_session` erases: a session the customer never joined, unnamed, holds nothing (a
    transaction needs the customer in the call). Once erased, it is never a candidate again."""
    session = CallSession.id
    return or_(
        _identity_checked(),
        CallSession.customer_name != "",
        select(Participant.id)
        .where(
            Participant.session_id == session,
            Participant.user_id.is_(None),
            Participant.display_name != ERASED,
        )
        .exists(),
        select(ChatMessage.id)
        .where(ChatMessage.session_id == session, ChatMessage.text != ERASED)
        .exists(),
    )


APPROVED = "approved"  # Transaction.state of a transaction approved and sent to the core bank


def _approved_not_erased() -> ColumnElement[bool]:
    """An approved transaction not erased yet: `_erase_session` removes the signed approval
    record every approved one has."""
    return and_(Transaction.state == APPROVED, Transaction.approval_record.is_not(None))


NEVER_DELIVERED = (
    "never delivered: its content was erased at the end of its retention (vteller archive purge)"
)


async def _erase_session(db: DbSession, session_id: str, *, approved: bool) -> int:
    """Erase, in the caller's transaction, what the database holds about the customer of
    `session_id`: its identity records and index entry are deleted; names, chat, notes and
    reasons become ERASED; transactions lose the account and the customer's details, the sealed
    signature image and the signed approval record, and their webhook deliveries the body.
    Ids, times, states, outcomes, products, amounts and hashes stay: what the bank may still be
    asked about without the person (docs/deployment.md, "What a purge erases, and what it
    keeps"). `approved`: approved transactions are erased too; otherwise they stay whole.
    Returns how many identity records went."""
    deleted = await db.execute(delete(IdentityCheck).where(IdentityCheck.session_id == session_id))
    await db.execute(delete(ArchiveIndexEntry).where(ArchiveIndexEntry.session_id == session_id))
    # Empty, as when the teller typed none: the name is a search criterion, which an empty one
    # is not, so a purged session is never found by a name, not even by the marker's.
    await db.execute(
        update(CallSession).where(CallSession.id == session_id).values(customer_name="")
    )
    # The customer (no user id); staff participants are the bank's employees, named in `users`.
    await db.execute(
        update(Participant)
        .where(Participant.session_id == session_id, Participant.user_id.is_(None))
        .values(display_name=ERASED)
    )
    await db.execute(
        update(ChatMessage).where(ChatMessage.session_id == session_id).values(text=ERASED)
    )
    await db.execute(
        update(ComplianceReview)
        .where(ComplianceReview.session_id == session_id, ComplianceReview.note.is_not(None))
        .values(note=ERASED)
    )
    tickets = select(QueueTicket.id).where(QueueTicket.session_id == session_id)
    await db.execute(
        update(QueueCallback)
        .where(QueueCallback.ticket_id.in_(tickets))
        .values(phone_hint="", key_id=None, wrapped_key=None, sealed=None)
    )
    query = select(Transaction).where(Transaction.session_id == session_id)
    if not approved:
        query = query.where(Transaction.state != APPROVED)
    transactions = list(await db.scalars(query))
    for row in transactions:
        row.content = _erased_content(row.content)
        row.signature_key_id = row.signature_wrapped_key = row.signature_sealed = None
        row.approval_record = None
    if ids := [row.id for row in transactions]:
        await db.execute(
            update(TransactionDecision)
            .where(
                TransactionDecision.transaction_id.in_(ids),
                TransactionDecision.reason.is_not(None),
            )
            .values(reason=ERASED)
        )
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.transaction_id.in_(ids), WebhookDelivery.state == DELIVERED)
            .values(body="")
        )
        # One never delivered in all those years is not sent any more, and not without a body.
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.transaction_id.in_(ids), WebhookDelivery.state != DELIVERED)
            .values(
                body="",
                state=FAILED,
                last_error=NEVER_DELIVERED,
                next_attempt_at=None,
                lease_owner=None,
                lease_until=None,
                updated_at=utcnow(),
            )
        )
    return int(getattr(deleted, "rowcount", 0) or 0)


def _erased_content(content: str) -> str:
    """The canonical transaction without the account and the values of the customer's details
    (what changes: their keys stay). It no longer hashes to `Transaction.sha256`, which stays as
    the reference to what was signed (the core bank holds the signed record)."""
    document = json.loads(content)
    if "account" in document:
        document["account"] = ERASED
    if isinstance(document.get("details"), dict):
        document["details"] = dict.fromkeys(document["details"], ERASED)
    return canonical_json(document).decode("utf-8")
