"""The archive search index: who, what and when of every sealed archive, searchable by auditors.

Most of it is already in the database (archives, sessions, tellers, compliance reports, holds);
this module adds the two things that are not: the customer's name and ID number as read from the
ID card (the number only as a keyed hash, idhash.py; the name sealed and keyed-hashed, names.py),
and the product (compliance script) from the archive's signed manifest, read from the store once
the archive is there.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.sql import Select

from recorder.seal.manifest import MANIFEST_OBJECT, ManifestError, parse_manifest
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, ArchiveStoreError
from server.auditor.idhash import IdNumberHasher
from server.auditor.names import CardNames, SealedName
from server.auditor.purge import PURGED
from server.background import cancel_and_wait
from server.crypto.rows import SealedRow
from server.db.engine import DbSession
from server.db.models import (
    Archive,
    ArchiveIndexEntry,
    ArchiveProduct,
    CallSession,
    ComplianceReport,
    LegalHoldRecord,
    User,
    utcnow,
)

log = structlog.get_logger(__name__)

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class SearchQuery:
    """Every criterion is optional; given ones must all match. Dates are UTC days, inclusive."""

    date_from: date | None = None
    date_to: date | None = None
    teller: str = ""
    customer_name: str = ""
    id_number: str = ""
    business: str = ""
    product: str = ""
    compliance: str = ""  # pass | fail | needs_review | pending
    hold: str = ""  # held | not_held
    page: int = 1

    def criteria(self) -> list[str]:
        """Names of the criteria used, for the audit log (never their values: an ID number)."""
        return [
            name
            for name in (
                "date_from",
                "date_to",
                "teller",
                "customer_name",
                "id_number",
                "business",
                "product",
                "compliance",
                "hold",
            )
            if getattr(self, name)
        ]


@dataclass(frozen=True)
class SearchPage:
    items: list[dict[str, Any]]
    total: int
    page: int
    page_size: int


def _containing(text: str, *columns: Any) -> list[Any]:
    """`text` anywhere in each column, literally: its own % and _ are no wildcards."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [column.like(f"%{escaped}%", escape="\\") for column in columns]


class ArchiveIndex:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        hasher: IdNumberHasher,
        names: CardNames,
        bucket: ArchiveBucket | None,
        *,
        page_size: int,
        wait_seconds: float,
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._names = names
        self._bucket = bucket  # None: the store is not configured, products stay unknown
        self._page_size = page_size
        self._wait_seconds = wait_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    # -- writing -------------------------------------------------------------------------------

    async def record_card(self, session_id: str, fields: dict[str, Any]) -> None:
        """The front of the customer's ID card passed: index their name (sealed and hashed) and
        number (hashed)."""
        number = fields.get("id_number")
        name = fields.get("name")
        id_hash = self._hasher.hash(str(number)) if number else None
        sealed: SealedName | None = None
        if name:
            sealed = await asyncio.to_thread(self._names.seal, session_id, str(name))
        async with self._db() as db, db.begin():
            entry = await db.get(ArchiveIndexEntry, session_id)
            if entry is None:
                entry = ArchiveIndexEntry(session_id=session_id)
                db.add(entry)
            if sealed is not None:
                entry.name_hash = sealed.hash
                entry.name_key_id = sealed.row.key_id
                entry.name_wrapped_key = sealed.row.wrapped_key
                entry.name_sealed = sealed.row.sealed
            entry.id_hash = id_hash or entry.id_hash
            entry.updated_at = utcnow()

    def sealed(self, archive_id: str) -> None:
        """An archive was sealed: index its product once its manifest is in the store."""
        task = asyncio.create_task(self._index_when_stored(archive_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self) -> None:
        """Index sealed archives that a stopped worker left unindexed."""
        async with self._db() as db:
            missing = await db.scalars(
                select(Archive.id)
                .outerjoin(ArchiveProduct, ArchiveProduct.archive_id == Archive.id)
                .where(
                    Archive.chain_index.is_not(None),
                    ArchiveProduct.archive_id.is_(None),
                    # Purged before it was indexed: nothing of it is left to read.
                    Archive.status != PURGED,
                )
            )
            for archive_id in list(missing):
                self.sealed(archive_id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            await cancel_and_wait(task)

    async def _index_when_stored(self, archive_id: str) -> None:
        if self._bucket is None:
            return
        name = archive_prefix(archive_id) + MANIFEST_OBJECT
        waited = 0.0
        while True:
            try:
                data = await self._bucket.get(name)
                break
            except ArchiveStoreError as exc:  # not there yet (not found), or unreachable
                if waited >= self._wait_seconds:
                    log.warning("auditor_index_gave_up", archive_id=archive_id, error=str(exc))
                    return
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
        try:
            manifest = parse_manifest(data)
        except ManifestError as exc:
            # Indexing is not verification: the portal's verify shows what is wrong with it.
            log.warning("auditor_index_bad_manifest", archive_id=archive_id, error=str(exc))
            return
        script = (manifest.compliance or {}).get("script")
        product = manifest.product or (str(script) if script else manifest.business)
        row = ArchiveProduct(archive_id=archive_id, product=product[:64])
        # Another worker catching up may index the same archive at the same moment: same row.
        with contextlib.suppress(IntegrityError):
            async with self._db() as db, db.begin():
                if await db.get(ArchiveProduct, archive_id) is None:
                    db.add(row)

    # -- searching -----------------------------------------------------------------------------

    def _query(self, query: SearchQuery) -> Select[Any]:
        statement = (
            select(Archive, CallSession, User, ComplianceReport, ArchiveIndexEntry)
            .add_columns(ArchiveProduct.product, LegalHoldRecord.held)
            .join(CallSession, CallSession.id == Archive.session_id)
            .join(User, User.id == CallSession.teller_id)
            .outerjoin(ComplianceReport, ComplianceReport.archive_id == Archive.id)
            .outerjoin(ArchiveIndexEntry, ArchiveIndexEntry.session_id == Archive.session_id)
            .outerjoin(ArchiveProduct, ArchiveProduct.archive_id == Archive.id)
            .outerjoin(LegalHoldRecord, LegalHoldRecord.archive_id == Archive.id)
            .where(Archive.chain_index.is_not(None))
        )
        conditions: list[Any] = []
        if query.date_from is not None:
            conditions.append(Archive.started_at >= datetime.combine(query.date_from, time(), UTC))
        if query.date_to is not None:
            end = datetime.combine(query.date_to + timedelta(days=1), time(), UTC)
            conditions.append(Archive.started_at < end)
        if query.teller:
            conditions.append(
                or_(
                    *_containing(query.teller, User.username, User.display_name),
                    User.id == query.teller,
                )
            )
        if query.customer_name:
            # Exact names only: the card's is only in the index as a keyed hash (names.py).
            conditions.append(
                or_(
                    CallSession.customer_name == query.customer_name.strip(),
                    ArchiveIndexEntry.name_hash == self._names.hash(query.customer_name),
                )
            )
        if query.id_number:
            conditions.append(ArchiveIndexEntry.id_hash == self._hasher.hash(query.id_number))
        if query.business:
            conditions.append(Archive.business == query.business)
        if query.product:
            conditions.append(ArchiveProduct.product == query.product)
        if query.compliance == "pending":
            conditions.append(
                or_(ComplianceReport.archive_id.is_(None), ComplianceReport.state != "done")
            )
        elif query.compliance:
            conditions.append(
                and_(
                    ComplianceReport.state == "done",
                    ComplianceReport.decision == query.compliance,
                )
            )
        if query.hold == "held":
            conditions.append(LegalHoldRecord.held.is_(True))
        elif query.hold == "not_held":
            conditions.append(or_(LegalHoldRecord.held.is_(None), LegalHoldRecord.held.is_(False)))
        return statement.where(*conditions)

    async def search(self, query: SearchQuery) -> SearchPage:
        statement = self._query(query)
        async with self._db() as db:
            total = int(
                await db.scalar(select(func.count()).select_from(statement.subquery())) or 0
            )
            rows = (
                await db.execute(
                    statement.order_by(Archive.started_at.desc(), Archive.id)
                    .offset((query.page - 1) * self._page_size)
                    .limit(self._page_size)
                )
            ).all()
        names = await asyncio.to_thread(self._open_names, [row[4] for row in rows])
        items = [_row_view(*row, card_name=name) for row, name in zip(rows, names, strict=True)]
        return SearchPage(items, total, query.page, self._page_size)

    async def entry(self, archive_id: str) -> dict[str, Any] | None:
        """One archive as the search shows it, or None if it is unknown or not sealed."""
        statement = self._query(SearchQuery()).where(Archive.id == archive_id)
        async with self._db() as db:
            row = (await db.execute(statement)).first()
        if row is None:
            return None
        [name] = await asyncio.to_thread(self._open_names, [row[4]])
        return _row_view(*row, card_name=name)

    def _open_names(self, entries: list[ArchiveIndexEntry | None]) -> list[str | None]:
        """The card names of these rows, decrypted (CPU work and key file reads: in a thread)."""
        return [
            self._names.open(
                entry.session_id,
                SealedRow(entry.name_key_id, entry.name_wrapped_key, entry.name_sealed),
            )
            if entry is not None
            and entry.name_key_id is not None
            and entry.name_wrapped_key is not None
            and entry.name_sealed is not None
            else None
            for entry in entries
        ]


def _row_view(
    archive: Archive,
    session: CallSession,
    teller: User,
    report: ComplianceReport | None,
    index: ArchiveIndexEntry | None,
    product: str | None,
    held: bool | None,
    *,
    card_name: str | None,
) -> dict[str, Any]:
    if report is None:
        compliance = "none"
    elif report.state == "done":
        compliance = report.decision or "needs_review"
    else:
        compliance = "pending"
    return {
        "archive_id": archive.id,
        "session_id": session.id,
        "status": archive.status,
        "business": archive.business,
        "product": product,
        "started_at": archive.started_at.isoformat(),
        "finalized_at": archive.finalized_at.isoformat() if archive.finalized_at else None,
        "teller": {"id": teller.id, "username": teller.username, "name": teller.display_name},
        "customer_name": session.customer_name,
        "card_name": card_name,
        "id_number_indexed": bool(index is not None and index.id_hash),
        "compliance": compliance,
        "legal_hold": bool(held),
        "manifest_sha256": archive.manifest_sha256,
    }
