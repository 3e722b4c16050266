"""Verification of a stored archive for the portal: what `vteller verify` does, against the live
store, with the chain link to the previous archive and, optionally, every segment decrypted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.playback import MediaInspector
from recorder.seal.keyring import KeyWrapper
from recorder.seal.manifest import MANIFEST_OBJECT
from recorder.seal.signing import load_public_keys
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, ArchiveStoreError, ArchiveUnavailableError, S3Archive
from recorder.verify import (
    PlaintextInspector,
    VerificationReport,
    signature_image,
    verify_archive,
)
from server.db.engine import DbSession
from server.db.models import Archive, ArchiveTombstone


@dataclass(frozen=True)
class Verified:
    report: VerificationReport
    chain: str  # linked | broken | first | purged (predecessor's tombstone) | unchecked
    media: list[str]

    @property
    def ok(self) -> bool:
        return self.report.ok

    def view(self) -> dict[str, Any]:
        report = self.report
        return {
            "ok": report.ok,
            "signature": report.signature_verified,
            "decrypted": report.decrypted,
            "chain": self.chain,
            "problems": [str(p) for p in report.problems],
            "notes": report.notes + self.media,
            "reports": report.reports,
        }


class ArchiveVerifier:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        bucket: ArchiveBucket,
        keyring: KeyWrapper,
        public_keys_dir: Path,
    ) -> None:
        self._db = db
        self._bucket = bucket
        self._keyring = keyring
        self._public_keys_dir = public_keys_dir
        # Decrypting a whole recording takes a core for a while: one at a time per worker, so
        # auditors can never starve the calls this worker carries.
        self._cpu = asyncio.Semaphore(1)

    async def _previous_manifest(self, archive_id: str) -> bytes | ArchiveTombstone | None:
        """The previous archive's manifest, or its tombstone if it was purged on schedule."""
        async with self._db() as db:
            previous_sha = await db.scalar(
                select(Archive.previous_sha256).where(Archive.id == archive_id)
            )
            if previous_sha is None:
                return None
            # Purged: the tombstone keeps the manifest's hash, recorded when it was sealed.
            tombstone = await db.scalar(
                select(ArchiveTombstone).where(
                    ArchiveTombstone.manifest_sha256 == previous_sha,
                    ArchiveTombstone.deleted_at.is_not(None),
                )
            )
            if tombstone is not None:
                return tombstone
            previous_id = await db.scalar(
                select(Archive.id).where(Archive.manifest_sha256 == previous_sha)
            )
        if previous_id is None:
            return None
        try:
            return await self._bucket.get(archive_prefix(previous_id) + MANIFEST_OBJECT)
        except ArchiveStoreError:
            return None  # reported as "not checked"; this archive's own checks still run

    async def verify(
        self, archive_id: str, inspector: PlaintextInspector | None = None
    ) -> Verified:
        """Signature, chain link and every segment; decrypted too (media checked unless another
        `inspector` takes the plaintext)."""
        found = await self._previous_manifest(archive_id)
        previous = found if isinstance(found, bytes) else None
        public_keys = await asyncio.to_thread(load_public_keys, self._public_keys_dir)
        reader = S3Archive(self._bucket, archive_prefix(archive_id))
        media = MediaInspector() if inspector is None else None
        async with self._cpu:
            try:
                report = await asyncio.to_thread(
                    verify_archive,
                    reader,
                    public_keys,
                    keyring=self._keyring,
                    previous_manifest=previous,
                    inspector=inspector or media,
                )
            except ArchiveUnavailableError:
                raise  # the store is down: nothing is known about the archive
            except ArchiveStoreError as exc:
                # An object whose bytes differ from what was stored (or vanished) is a finding.
                report = VerificationReport()
                report.add("store", str(exc))
        if report.manifest is None or report.manifest.previous_manifest_sha256 is None:
            chain = "first"
        elif previous is not None:
            broken = any("previous" in p.message for p in report.problems)
            chain = "broken" if broken else "linked"
        elif isinstance(found, ArchiveTombstone) and found.deleted_at is not None:
            # Not "broken": the predecessor is gone on schedule, and the link names exactly the
            # manifest its tombstone records.
            chain = "purged"
            report.notes.append(
                f"predecessor {found.archive_id} purged on {found.deleted_at:%Y-%m-%d} "
                f"(tombstone: manifest sha256 {found.manifest_sha256}, retained until "
                f"{found.retain_until:%Y-%m-%d})"
            )
        else:
            chain = "unchecked"
        described = media.summary.describe() if media is not None and media.summary else []
        return Verified(report, chain, described)

    async def signature_image(self, archive_id: str, transaction_id: str) -> bytes:
        """A transaction's signature image from the sealed archive, checked on the way (raises
        recorder.verify.ImageUnavailable, or ArchiveStoreError when the store fails)."""
        public_keys = await asyncio.to_thread(load_public_keys, self._public_keys_dir)
        reader = S3Archive(self._bucket, archive_prefix(archive_id))
        return await asyncio.to_thread(
            signature_image, reader, public_keys, self._keyring, transaction_id
        )
