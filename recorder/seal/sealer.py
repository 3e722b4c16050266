"""The writing side: one archive's data key, its segments in order, and the signed manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from recorder.seal.keyring import KeyWrapper, generate_data_key
from recorder.seal.manifest import (
    FORMAT_VERSION,
    AttachmentEntry,
    Manifest,
    SegmentEntry,
    WrappedKeyEntry,
    sign_manifest,
)
from recorder.seal.signing import Signer
from recorder.seal.stream import CHUNK_SIZE, SegmentEncryptor, encrypt_segment


@dataclass(frozen=True)
class SealedManifest:
    manifest: Manifest
    data: bytes
    """`manifest.json`: the canonical bytes."""
    signature: bytes
    """`manifest.sig`: 64 raw bytes."""


class ArchiveSealer:
    """Hands out one encryptor per segment, in index order, and signs the manifest at the end.

    The data key exists in clear only inside this object; what is stored is its wrapped form.
    """

    def __init__(
        self,
        archive_id: UUID,
        wrapper: KeyWrapper,
        *,
        chunk_size: int = CHUNK_SIZE,
        data_key: bytes | None = None,
    ) -> None:
        self.archive_id = archive_id
        self.chunk_size = chunk_size
        self._data_key = generate_data_key() if data_key is None else data_key
        self.wrapped_key = wrapper.wrap(self._data_key, archive_id)
        self._segments: list[SegmentEntry] = []
        self._attachments: list[AttachmentEntry] = []
        self._open: SegmentEncryptor | None = None

    @property
    def segments(self) -> list[SegmentEntry]:
        return list(self._segments)

    @property
    def attachments(self) -> list[AttachmentEntry]:
        return list(self._attachments)

    def seal_attachment(self, data: bytes, media_type: str) -> tuple[AttachmentEntry, bytes]:
        """Encrypt a document for the archive (the next attachment index); returns its manifest
        entry, already listed, and the ciphertext to store."""
        ciphertext, digest = encrypt_segment(
            self._data_key,
            self.archive_id,
            len(self._attachments),
            data,
            chunk_size=self.chunk_size,
            key_info=AttachmentEntry.key_info,
        )
        entry = AttachmentEntry.from_digest(digest, media_type)
        self._attachments.append(entry)
        return entry, ciphertext

    def open_segment(self) -> SegmentEncryptor:
        """The encryptor for the next segment; the previous one must have been closed."""
        if self._open is not None:
            raise RuntimeError(f"segment {self._open.index} is still open")
        self._open = SegmentEncryptor(
            self._data_key, self.archive_id, len(self._segments), chunk_size=self.chunk_size
        )
        return self._open

    def close_segment(self, encryptor: SegmentEncryptor) -> SegmentEntry:
        """Record a finalized segment (call after its ciphertext is stored)."""
        if encryptor is not self._open:
            raise RuntimeError("not the segment this sealer has open")
        entry = SegmentEntry.from_digest(encryptor.digest)
        self._segments.append(entry)
        self._open = None
        return entry

    def finish(self, signer: Signer, **session_fields: Any) -> SealedManifest:
        """Build, validate and sign the manifest; `session_fields` are the manifest's other fields
        (session_id, business, product, participants, marks, tracks, status, gaps, identity,
        compliance, recorder_version, created_at, finalized_at, previous_manifest_sha256)."""
        if self._open is not None:
            raise RuntimeError(f"segment {self._open.index} is still open")
        manifest = Manifest.model_validate(
            {
                **session_fields,
                "format_version": FORMAT_VERSION,
                "archive_id": str(self.archive_id),
                "chunk_size": self.chunk_size,
                "segments": self._segments,
                "attachments": self._attachments or None,
                "wrapped_key": WrappedKeyEntry.from_wrapped(self.wrapped_key),
                "signing_key_id": signer.key_id,
            }
        )
        data, signature = sign_manifest(manifest, signer)
        return SealedManifest(manifest=manifest, data=data, signature=signature)
