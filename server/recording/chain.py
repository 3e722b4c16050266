"""The manifest chain in the shared database: each sealed archive names its predecessor."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.session import ArchiveRecord
from server.db.engine import DbSession
from server.db.models import Archive


class ChainConflict(RuntimeError):
    """An archive already in the chain was offered with a different manifest."""


class DatabaseChain:
    def __init__(self, db: async_sessionmaker[DbSession]) -> None:
        self._db = db

    async def head(self) -> str | None:
        async with self._db() as db:
            return await db.scalar(
                select(Archive.manifest_sha256)
                .where(Archive.chain_index.is_not(None))
                .order_by(Archive.chain_index.desc())
                .limit(1)
            )

    async def append(self, record: ArchiveRecord) -> bool:
        """Chain `record` after the head; False if the head is no longer its predecessor.
        Appending a manifest the chain already holds is a no-op (a seal finished after a crash);
        another manifest for an archive already chained is refused (ChainConflict)."""
        try:
            async with self._db() as db, db.begin():
                archive = await db.get(Archive, record.archive_id)
                if archive is not None and archive.chain_index is not None:
                    if archive.manifest_sha256 == record.manifest_sha256:
                        return True
                    raise ChainConflict(
                        f"archive {record.archive_id} is already chained (position "
                        f"{archive.chain_index}, manifest {archive.manifest_sha256}); a second "
                        "manifest for it would fork the chain. Keep its journal and compare the "
                        "stored manifest with it before doing anything."
                    )
                head = (
                    await db.execute(
                        select(Archive.chain_index, Archive.manifest_sha256)
                        .where(Archive.chain_index.is_not(None))
                        .order_by(Archive.chain_index.desc())
                        .limit(1)
                    )
                ).first()
                if (head[1] if head else None) != record.previous_sha256:
                    return False
                if archive is None:
                    archive = Archive(
                        id=record.archive_id,
                        session_id=record.session_id,
                        business=record.business,
                        started_at=record.created_at,
                    )
                    db.add(archive)
                archive.status = "sealed" if record.status == "complete" else "interrupted"
                archive.manifest_sha256 = record.manifest_sha256
                archive.previous_sha256 = record.previous_sha256
                archive.finalized_at = record.finalized_at
                archive.chain_index = (head[0] or 0) + 1 if head else 0
        except IntegrityError:
            return False  # another worker took that chain position first
        return True

    async def started(self, archive_id: str, session_id: str, business: str) -> None:
        async with self._db() as db, db.begin():
            db.add(Archive(id=archive_id, session_id=session_id, business=business))
