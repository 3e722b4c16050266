"""The archive manifest, format version 1 (docs/archive-format.md, section 2).

The manifest is the signed statement of what an archive holds. It is stored as its canonical
bytes (`manifest.json`) with a detached Ed25519 signature over exactly those bytes
(`manifest.sig`, 64 raw bytes). Models are strict and closed (unknown fields are errors) so that
parsing and re-serialising a valid manifest gives back the very same bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
)

from recorder.seal.canonical import CanonicalJsonError, canonical_json, parse_json
from recorder.seal.digest import sha256_hex
from recorder.seal.keyring import WRAP_NONCE_SIZE, WRAPPED_KEY_SIZE, WrappedKey
from recorder.seal.signing import Signer
from recorder.seal.stream import (
    ATTACHMENT_KEY_INFO,
    MAX_CHUNK_SIZE,
    SEGMENT_KEY_INFO,
    SegmentDigest,
)

FORMAT_VERSION = 1
MANIFEST_OBJECT = "manifest.json"
SIGNATURE_OBJECT = "manifest.sig"
SEGMENT_OBJECT_PATTERN = re.compile(r"seg-[0-9]{6,}\.bin")
ATTACHMENT_OBJECT_PATTERN = re.compile(r"att-[0-9]{6,}\.bin")

# Members a manifest has only when they are not empty (never null, never []).
OPTIONAL_MEMBERS = ("transactions", "attachments")

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_SAFE_INT = 2**53 - 1


def segment_object_name(index: int) -> str:
    """`seg-` + the index as at least six decimal digits + `.bin`."""
    return _object_name("seg", index)


def attachment_object_name(index: int) -> str:
    """`att-` + the index as at least six decimal digits + `.bin`."""
    return _object_name("att", index)


def _object_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.bin"


def format_timestamp(moment: datetime) -> str:
    """The form vteller writes: UTC, millisecond precision, `Z` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_timestamp(value: str) -> str:
    if not _TIMESTAMP.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time with a UTC offset, e.g. 2025-01-31T08:00:00Z"
        )
    datetime.fromisoformat(value)  # rejects impossible dates such as 2025-02-30
    return value


def _check_uuid(value: str) -> str:
    if str(UUID(value)) != value:
        raise ValueError("must be a UUID in lowercase hyphenated form")
    return value


def _check_base64(value: str) -> str:
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not base64: {error}") from None
    if base64.b64encode(decoded).decode("ascii") != value:
        raise ValueError("must be standard base64 with padding")
    return value


def _base64_of(size: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        decoded = base64.b64decode(_check_base64(value))
        if len(decoded) != size:
            raise ValueError(f"must encode {size} bytes, not {len(decoded)}")
        return value

    return check


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    # Free-form results are carried as they are, but they are hashed and signed too, so they must
    # be representable canonically: no floats (write decimals as strings), integers within 2^53.
    canonical_json(value)
    return value


Timestamp = Annotated[str, AfterValidator(_check_timestamp)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=_SAFE_INT)]
Text = Annotated[str, StringConstraints(min_length=1)]
FreeForm = Annotated[dict[str, JsonValue], AfterValidator(_check_json_object)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Presence(_Model):
    """One stay of a participant in the call; `left_at` is null if the recording ended first."""

    joined_at: Timestamp
    left_at: Timestamp | None


class Participant(_Model):
    id: Text
    role: Text
    display_name: str
    presence: list[Presence]


class Mark(_Model):
    """A key moment (e.g. risk disclosure read, customer consent) on the media timeline."""

    name: Text
    media_ms: Count
    wall_time: Timestamp


class Track(_Model):
    id: Text
    kind: Literal["audio", "video"]
    participant_id: Text
    source: Text


class SealedObject(_Model):
    """An object encrypted with a key derived for its position (docs/archive-format.md 4, 5)."""

    what: ClassVar[str]
    prefix: ClassVar[str]
    key_info: ClassVar[bytes]

    index: Count
    object: str
    plaintext_size: Count
    ciphertext_size: Count
    plaintext_sha256: Sha256Hex
    ciphertext_sha256: Sha256Hex

    @property
    def expected_object(self) -> str:
        """The object name its index calls for."""
        return _object_name(self.prefix, self.index)

    @property
    def subject(self) -> str:
        """How a verification report names it: `segment 3 (seg-000003.bin)`."""
        return f"{self.what} {self.index} ({self.object})"


class SegmentEntry(SealedObject):
    what = "segment"
    prefix = "seg"
    key_info = SEGMENT_KEY_INFO

    object: Annotated[str, StringConstraints(pattern=r"^seg-[0-9]{6,}\.bin$")]

    @classmethod
    def from_digest(cls, digest: SegmentDigest) -> SegmentEntry:
        return cls(object=segment_object_name(digest.index), **asdict(digest))


class AttachmentEntry(SealedObject):
    """A document stored with the recording, e.g. the customer's signature image: a transaction
    binding's `signature_sha256` is the `plaintext_sha256` of its image here."""

    what = "attachment"
    prefix = "att"
    key_info = ATTACHMENT_KEY_INFO

    object: Annotated[str, StringConstraints(pattern=r"^att-[0-9]{6,}\.bin$")]
    media_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[a-z0-9.+-]+$")]

    @classmethod
    def from_digest(cls, digest: SegmentDigest, media_type: str) -> AttachmentEntry:
        return cls(
            object=attachment_object_name(digest.index),
            media_type=media_type,
            **asdict(digest),
        )


class WrappedKeyEntry(_Model):
    key_id: Text
    nonce: Annotated[str, AfterValidator(_base64_of(WRAP_NONCE_SIZE))]
    ciphertext: Annotated[str, AfterValidator(_base64_of(WRAPPED_KEY_SIZE))]

    @classmethod
    def from_wrapped(cls, wrapped: WrappedKey) -> WrappedKeyEntry:
        return cls(
            key_id=wrapped.key_id,
            nonce=base64.b64encode(wrapped.nonce).decode("ascii"),
            ciphertext=base64.b64encode(wrapped.ciphertext).decode("ascii"),
        )

    def to_wrapped(self) -> WrappedKey:
        return WrappedKey(
            key_id=self.key_id,
            nonce=base64.b64decode(self.nonce),
            ciphertext=base64.b64decode(self.ciphertext),
        )


class Gap(_Model):
    """A stretch of the session that is not in the media (dropped connection, capture failure)."""

    start_ms: Count
    end_ms: Count
    reason: Text


class TransactionBinding(_Model):
    """A transaction the customer signed while this recording ran (docs/workflow.md)."""

    id: Text
    sha256: Sha256Hex
    signature_sha256: Sha256Hex
    signed_at: Timestamp
    media_ms: Count


class Manifest(_Model):
    format_version: Literal[1]
    archive_id: Annotated[str, AfterValidator(_check_uuid)]
    session_id: Text
    business: Text
    product: str | None
    participants: list[Participant]
    marks: list[Mark]
    tracks: list[Track]
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK_SIZE)]
    segments: list[SegmentEntry]
    wrapped_key: WrappedKeyEntry
    status: Literal["complete", "interrupted"]
    gaps: list[Gap]
    identity: FreeForm | None
    compliance: FreeForm | None
    recorder_version: Text
    created_at: Timestamp
    finalized_at: Timestamp
    previous_manifest_sha256: Sha256Hex | None
    signing_key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    # Optional and absent when empty (never null, never []), so manifests from before them
    # keep their bytes.
    transactions: Annotated[list[TransactionBinding], Field(min_length=1)] | None = None
    attachments: Annotated[list[AttachmentEntry], Field(min_length=1)] | None = None

    @property
    def archive_uuid(self) -> UUID:
        return UUID(self.archive_id)

    def signature_attachment(self, binding: TransactionBinding) -> AttachmentEntry | None:
        """The attachment holding `binding`'s signature image (None: only its hash is bound)."""
        images = self.attachments or []
        return next((a for a in images if a.plaintext_sha256 == binding.signature_sha256), None)

    @property
    def sealed_objects(self) -> list[SegmentEntry | AttachmentEntry]:
        """Every encrypted object the manifest lists: the segments, then the attachments."""
        return [*self.segments, *(self.attachments or [])]

    def canonical_bytes(self) -> bytes:
        document = self.model_dump(mode="json")
        for member in OPTIONAL_MEMBERS:
            if document[member] is None:
                del document[member]
        return canonical_json(document)


class ManifestError(ValueError):
    """Bytes that are not a valid version 1 manifest."""


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes (which may still be non-canonical: see `is_canonical`)."""
    try:
        document = parse_json(data)
    except CanonicalJsonError as error:
        raise ManifestError(str(error)) from None
    if not isinstance(document, dict):
        raise ManifestError("not a JSON object")
    if document.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"format_version is {document.get('format_version')!r}; this reader knows only 1"
        )
    try:
        return Manifest.model_validate(document)
    except ValidationError as error:
        raise ManifestError(_describe(error)) from None


def is_canonical(manifest: Manifest, data: bytes) -> bool:
    return manifest.canonical_bytes() == data


def manifest_sha256(data: bytes) -> str:
    """The value the next archive records as `previous_manifest_sha256`."""
    return sha256_hex(data)


def sign_manifest(manifest: Manifest, signer: Signer) -> tuple[bytes, bytes]:
    """Return (`manifest.json` bytes, `manifest.sig` bytes) for storing."""
    if manifest.signing_key_id != signer.key_id:
        raise ValueError(
            f"manifest names signing key {manifest.signing_key_id}, signer is {signer.key_id}"
        )
    data = manifest.canonical_bytes()
    return data, signer.sign(data)


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "manifest"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)
