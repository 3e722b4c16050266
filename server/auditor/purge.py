"""Deleting personal information when its retention ends (PIPL art. 19 and 47): sealed archives
whose COMPLIANCE retention has ended in the store, with what the database holds about their
customer, and the identity records of sessions that were never recorded.

The store decides, not the database: an archive is due only when every version of every one of
its objects has a retain-until in the past and no legal hold, as the store reports them, and the
store's refusal to delete (its own clock) is the last guard. What stays is a tombstone
(`ArchiveTombstone`): the chain of manifests stays verifiable across the gap, and the audit log
shows the deletion (`archive.purged`). docs/archive-format.md, "Tombstones".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.manifest import MANIFEST_OBJECT
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, StoredVersion, VersionLock
from server.audit import SYSTEM, AuditLog
from server.auditor.exporting import ExportSpool
from server.auditor.holds import PARALLEL_CALLS, LegalHolds
from server.db.engine import DbSession
from server.db.models import (
    Archive,
    ArchiveIndexEntry,
    ArchiveProduct,
    ArchiveTombstone,
    CallSession,
    IdentityCheck,
    LegalHoldRecord,
    utcnow,
)

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
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._bucket = bucket
        self._audit = audit
        self._exports = exports
        self._holds = LegalHolds(db, bucket)
        self._actor = actor
        self._unrecorded = timedelta(days=unrecorded_retention_days)
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
            return result(f"legal hold since {hold.changed_at:%Y-%m-%d} ({hold.reason})")
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
        """Sessions with identity records but no sealed archive, ended more than
        `unrecorded_retention_days` ago, or (kept) with a recording not sealed yet."""
        cutoff = self._now() - self._unrecorded
        ended = func.coalesce(CallSession.ended_at, CallSession.created_at)
        sealed = select(Archive.id).where(
            Archive.session_id == CallSession.id, Archive.chain_index.is_not(None)
        )
        unsealed = select(Archive.id).where(
            Archive.session_id == CallSession.id, Archive.chain_index.is_(None)
        )
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(CallSession.id, ended, func.count(IdentityCheck.id), unsealed.exists())
                    .join(IdentityCheck, IdentityCheck.session_id == CallSession.id)
                    .where(~sealed.exists(), ended < cutoff)
                    .group_by(CallSession.id, ended)
                    .order_by(ended)
                )
            ).all()
        return [
            SessionCandidate(
                session_id,
                at,
                count,
                # A recording the spool may still seal (after a worker's restart): its identity
                # records then belong with it, so they are not deleted under it.
                "a recording of it was never sealed: check the worker's spool "
                "(docs/deployment.md) before its identity records are deleted"
                if recording
                else None,
            )
            for session_id, at, count, recording in rows
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
                # The customer's identity evidence and index entries (name and ID number hashes)
                # describe the session, which the last of its recordings leaves with.
                records = await _delete_identity(db, session_id)
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

    async def purge_session(self, candidate: SessionCandidate) -> int:
        """Delete an unrecorded session's identity records (and its index entry); logged first,
        so that no deletion is ever missing from the audit log (an interrupted run may log one
        twice). Returns how many records went."""
        await self._audit.append(
            "identity.purged",
            actor=self._actor,
            actor_role=SYSTEM,
            target=candidate.session_id,
            detail={
                "records": candidate.records,
                "ended_at": candidate.ended_at.isoformat(),
                "retention_days": self._unrecorded.days,
            },
        )
        async with self._db() as db, db.begin():
            records = await _delete_identity(db, candidate.session_id)
        log.info("identity_purged", session_id=candidate.session_id, identity_records=records)
        return records


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


async def _delete_identity(db: DbSession, session_id: str) -> int:
    deleted = await db.execute(delete(IdentityCheck).where(IdentityCheck.session_id == session_id))
    await db.execute(delete(ArchiveIndexEntry).where(ArchiveIndexEntry.session_id == session_id))
    return int(getattr(deleted, "rowcount", 0) or 0)
