"""The archive store's uploader, started for a test and stopped however the test ends; sealed
archives without media."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from recorder.seal.keyring import KeyWrapper
from recorder.seal.sealer import ArchiveSealer, SealedManifest
from recorder.seal.signing import Signer
from recorder.store.spool import Spool, Uploader, UploadTarget


@contextlib.asynccontextmanager
async def running_uploader(
    spool: Spool,
    target: UploadTarget,
    *,
    backoff_min_seconds: float = 0.05,
    backoff_max_seconds: float = 0.5,
) -> AsyncIterator[Uploader]:
    """An uploader emptying `spool` into `target`, retrying within a fraction of a second."""
    uploader = Uploader(
        spool,
        target,
        backoff_min_seconds=backoff_min_seconds,
        backoff_max_seconds=backoff_max_seconds,
    )
    await uploader.start()
    try:
        yield uploader
    finally:
        await uploader.stop()


def seal_empty(
    archive_id: str,
    keyring: KeyWrapper,
    signer: Signer,
    session_id: str,
    previous_manifest_sha256: str | None = None,
) -> SealedManifest:
    """The signed manifest of a complete archive of `session_id` without any media (a wealth
    session, sealed on 2025-01-31): for tests of what is done with sealed archives, not of
    recording."""
    return ArchiveSealer(uuid.UUID(archive_id), keyring).finish(
        signer,
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
        previous_manifest_sha256=previous_manifest_sha256,
    )
