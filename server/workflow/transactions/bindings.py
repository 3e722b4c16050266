"""The signature a sealed recording binds for a transaction, read from its stored manifest.

An approval record names the recording's manifest by the SHA-256 the manifest chain recorded when
it was sealed (`archives.manifest_sha256`); the manifest itself is only in the archive store. The
approval reads it from there, checks it is that very manifest, and compares the signature it binds
with the transaction's (docs/workflow.md, section 3). A sealed manifest never changes (its hash
is its name here), so what it binds is kept once read: the supervisors' queue shows the check
for every open transaction without a store request each.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

import structlog

from recorder.seal.manifest import MANIFEST_OBJECT, ManifestError, parse_manifest
from recorder.session import archive_prefix
from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveIntegrityError,
    ArchiveNotFoundError,
    ArchiveStoreError,
)
from server.errors import ApiError

log = structlog.get_logger(__name__)

# Manifests whose bindings are kept (a few hundred bytes each): the open transactions of a day.
KEPT_MANIFESTS = 4096
Bindings = dict[str, str | None]  # transaction id -> signature_sha256


class RecordedSignatures:
    def __init__(self, bucket: object) -> None:
        """`bucket`: the recorder's archive store; anything else means none is configured."""
        self._bucket = bucket if isinstance(bucket, ArchiveBucket) else None
        self._kept: OrderedDict[tuple[str, str], Bindings] = OrderedDict()

    async def bound(self, archive_id: str, manifest_sha256: str, transaction_id: str) -> str | None:
        """The `signature_sha256` that the sealed manifest of `archive_id` binds for
        `transaction_id`, None when it binds none; ApiError when the manifest cannot be read
        or is not the one sealed."""
        key = (archive_id, manifest_sha256)
        bindings = self._kept.get(key)
        if bindings is None:
            bindings = await self._read(archive_id, manifest_sha256)
            self._kept[key] = bindings
            if len(self._kept) > KEPT_MANIFESTS:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return bindings.get(transaction_id)

    async def _read(self, archive_id: str, manifest_sha256: str) -> Bindings:
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
        except ArchiveIntegrityError as exc:
            # The store's own text names the bucket and object: for the server log only.
            log.error("recorded_manifest_corrupt", archive_id=archive_id, error=str(exc))
            raise _not_verified(
                archive_id, "its bytes do not match the hash stored with them"
            ) from exc
        except ArchiveStoreError as exc:
            # Unreachable, misconfigured (bucket, credentials) or refusing (AccessDenied,
            # SlowDown, ...): nothing is known about the evidence itself, so this is no verdict
            # on it. The details (bucket names, S3 text) are for operators, not for tellers.
            log.error("recorded_manifest_unreadable", archive_id=archive_id, error=str(exc))
            raise ApiError(
                503,
                "archive_unavailable",
                f"The archive store could not give the sealed recording {archive_id}: try again "
                "in a minute; if it keeps failing, tell an operator (the server log names the "
                "store's error).",
            ) from exc
        return await asyncio.to_thread(_bindings, data, archive_id, manifest_sha256)


def _bindings(data: bytes, archive_id: str, manifest_sha256: str) -> Bindings:
    # CPU work (hashing, parsing): called in a thread.
    if hashlib.sha256(data).hexdigest() != manifest_sha256:
        raise _not_verified(archive_id, f"its SHA-256 is not {manifest_sha256}, the one sealed")
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        raise _not_verified(archive_id, str(exc)) from exc
    return {t.id: t.signature_sha256 for t in manifest.transactions or []}


def _not_verified(archive_id: str, problem: str) -> ApiError:
    return ApiError(
        409,
        "recording_not_verified",
        f"The manifest stored for recording {archive_id} is not the one sealed ({problem}): "
        "nothing can be approved on it. Have an auditor verify the archive in the portal.",
    )
