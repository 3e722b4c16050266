"""The signature a sealed recording binds for a transaction, read from its stored manifest.

An approval record names the recording's manifest by the SHA-256 the manifest chain recorded when
it was sealed (`archives.manifest_sha256`); the manifest itself is only in the archive store. The
approval reads it from there, checks it is that very manifest, and compares the signature it binds
with the transaction's (docs/workflow.md, section 3).
"""

from __future__ import annotations

import asyncio
import hashlib

from recorder.seal.manifest import MANIFEST_OBJECT, ManifestError, parse_manifest
from recorder.session import archive_prefix
from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveNotFoundError,
    ArchiveStoreError,
    ArchiveUnavailableError,
)
from server.errors import ApiError


class RecordedSignatures:
    def __init__(self, bucket: object) -> None:
        """`bucket`: the recorder's archive store; anything else means none is configured."""
        self._bucket = bucket if isinstance(bucket, ArchiveBucket) else None

    async def bound(self, archive_id: str, manifest_sha256: str, transaction_id: str) -> str | None:
        """The `signature_sha256` that the sealed manifest of `archive_id` binds for
        `transaction_id`, None when it binds none; ApiError when the manifest cannot be read
        or is not the one sealed."""
        if self._bucket is None:
            raise ApiError(
                503,
                "archive_unavailable",
                "The archive store is not configured (VTELLER_S3_*): the approval reads the "
                "sealed recording's manifest from it. Configure it and try again.",
            )
        try:
            data = await self._bucket.get(archive_prefix(archive_id) + MANIFEST_OBJECT)
        except ArchiveNotFoundError as exc:
            raise ApiError(
                409,
                "recording_not_stored",
                f"The sealed recording {archive_id} has not reached the archive store yet (it is "
                "uploaded moments after sealing, or once the store is reachable again): try "
                "again in a minute.",
            ) from exc
        except ArchiveUnavailableError as exc:
            raise ApiError(
                503,
                "archive_unavailable",
                f"The archive store cannot be reached to read the sealed recording ({exc}): try "
                "again in a minute.",
            ) from exc
        except ArchiveStoreError as exc:
            raise _not_verified(archive_id, str(exc)) from exc
        return await asyncio.to_thread(_bound, data, archive_id, manifest_sha256, transaction_id)


def _bound(data: bytes, archive_id: str, manifest_sha256: str, transaction_id: str) -> str | None:
    # CPU work (hashing, parsing): called in a thread.
    if hashlib.sha256(data).hexdigest() != manifest_sha256:
        raise _not_verified(archive_id, f"its SHA-256 is not {manifest_sha256}, the one sealed")
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        raise _not_verified(archive_id, str(exc)) from exc
    binding = next((t for t in manifest.transactions or [] if t.id == transaction_id), None)
    return None if binding is None else binding.signature_sha256


def _not_verified(archive_id: str, problem: str) -> ApiError:
    return ApiError(
        409,
        "recording_not_verified",
        f"The manifest stored for recording {archive_id} is not the one sealed ({problem}): "
        "nothing can be approved on it. Have an auditor verify the archive in the portal.",
    )
