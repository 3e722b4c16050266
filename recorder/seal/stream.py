"""Chunked AEAD for one segment: the STREAM construction over AES-256-GCM.

A segment's plaintext is cut into chunks of `chunk_size` bytes; each is sealed with AES-256-GCM
under a key derived for this archive and this segment position, with a nonce made of the chunk
counter and a flag that is set only on the final chunk (docs/archive-format.md, section 5).
Because of the counter, chunks cannot be reordered; because of the flag, a segment cut at a chunk
boundary no longer ends with a final chunk; because the key depends on archive id and segment
index, a segment moved to another position or archive does not authenticate.

The final chunk holds between 1 and `chunk_size` bytes, or 0 bytes when the whole segment is
empty, so the last chunk can always be recognised as "whatever remains at the end".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK_SIZE = 64 * 1024
"""Default plaintext bytes per chunk; the value used is recorded in each manifest."""
MAX_CHUNK_SIZE = 16 * 1024 * 1024
"""Upper bound accepted from a manifest, so a hostile manifest cannot make us buffer gigabytes."""
TAG_SIZE = 16
KEY_SIZE = 32
SEGMENT_KEY_INFO = b"vteller/v1/segment"
ATTACHMENT_KEY_INFO = b"vteller/v1/attachment"
"""HKDF labels: an attachment (e.g. the customer's signature image) and a segment with the same
index get different keys, so neither can stand in for the other."""
COUNTER_SIZE = 11
_MAX_CHUNKS = 1 << (8 * COUNTER_SIZE)
_MAX_INDEX = (1 << 64) - 1


class SegmentError(Exception):
    """A segment's ciphertext is not an authentic, complete STREAM for its position."""


class ChunkAuthenticationError(SegmentError):
    """A chunk's tag does not verify: altered, moved, from another archive, or the wrong key."""

    def __init__(self, chunk: int) -> None:
        super().__init__(
            f"chunk {chunk} fails authentication (altered, moved from another segment or "
            "archive, or the wrong key)"
        )
        self.chunk = chunk


class TruncatedSegmentError(SegmentError):
    """The ciphertext ends without a final chunk."""

    def __init__(self, chunks: int) -> None:
        super().__init__(f"truncated (no final chunk after {chunks} chunk(s))")
        self.chunks = chunks


@dataclass(frozen=True)
class SegmentDigest:
    """Sizes and SHA-256 digests (lowercase hex) of one segment, as the manifest records them."""

    index: int
    plaintext_size: int
    ciphertext_size: int
    plaintext_sha256: str
    ciphertext_sha256: str


def derive_segment_key(
    data_key: bytes, archive_id: UUID, index: int, key_info: bytes = SEGMENT_KEY_INFO
) -> bytes:
    """HKDF-SHA256(data key, salt = archive id's 16 bytes, info = label || u64 BE index)."""
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"data key must be {KEY_SIZE} bytes, got {len(data_key)}")
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"segment index {index} is outside 0..2^64-1")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=archive_id.bytes,
        info=key_info + index.to_bytes(8, "big"),
    )
    return hkdf.derive(data_key)


def chunk_nonce(counter: int, *, last: bool) -> bytes:
    """11-byte big-endian chunk counter followed by 0x01 on the final chunk, 0x00 otherwise."""
    if not 0 <= counter < _MAX_CHUNKS:
        raise ValueError(f"chunk counter {counter} does not fit in {COUNTER_SIZE} bytes")
    return counter.to_bytes(COUNTER_SIZE, "big") + (b"\x01" if last else b"\x00")


def check_chunk_size(chunk_size: int) -> int:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}")
    return chunk_size


class _Chunker:
    """Cuts a byte stream into fixed-size pieces, always holding back the last (possibly full) one.

    The STREAM flag needs to know whether a chunk is the final one, which is only known once more
    data arrives or the stream ends; so a full chunk is released only when at least one more byte
    follows it. Whole chunks inside one input are returned as views without copying.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._pending = bytearray()

    def split(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        size = self._size
        # Media arrives in writes much smaller than a chunk; keep that path to one append.
        if not isinstance(data, memoryview) and len(self._pending) + len(data) <= size:
            self._pending += data
            return []
        view = memoryview(data).cast("B")
        chunks: list[bytes | memoryview] = []
        if self._pending:
            need = size - len(self._pending)
            if len(view) <= need:
                self._pending += view
                return chunks
            self._pending += view[:need]
            chunks.append(bytes(self._pending))
            self._pending.clear()
            view = view[need:]
        whole = (len(view) - 1) // size if view else 0
        chunks.extend(view[i * size : (i + 1) * size] for i in range(whole))
        self._pending += view[whole * size :]
        return chunks

    def rest(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return rest


class _SegmentCipher:
    """What encryptor and decryptor share: key, counter, running digests, the one-shot end.

    `key_info` is the HKDF label: SEGMENT_KEY_INFO, or ATTACHMENT_KEY_INFO for an attachment.
    """

    # What each input piece holds beyond a chunk's plaintext: nothing, or a decryptor's tag.
    _piece_overhead: ClassVar[int]

    def __init__(
        self,
        data_key: bytes,
        archive_id: UUID,
        index: int,
        *,
        chunk_size: int = CHUNK_SIZE,
        key_info: bytes = SEGMENT_KEY_INFO,
    ) -> None:
        self.index = index
        self.chunk_size = check_chunk_size(chunk_size)
        self._chunker = _Chunker(self.chunk_size + self._piece_overhead)
        self._aead = AESGCM(derive_segment_key(data_key, archive_id, index, key_info))
        self._counter = 0
        self._plain_hash = hashes.Hash(hashes.SHA256())
        self._cipher_hash = hashes.Hash(hashes.SHA256())
        self._plain_size = 0
        self._cipher_size = 0
        self._digest: SegmentDigest | None = None

    @property
    def digest(self) -> SegmentDigest:
        """Sizes and hashes of the whole segment; available once `finalize()` has succeeded."""
        if self._digest is None:
            raise RuntimeError(f"segment {self.index} is not finalized")
        return self._digest

    def _check_open(self) -> None:
        if self._digest is not None:
            raise RuntimeError(f"segment {self.index} is already finalized")

    def _finish(self) -> None:
        self._digest = SegmentDigest(
            index=self.index,
            plaintext_size=self._plain_size,
            ciphertext_size=self._cipher_size,
            plaintext_sha256=self._plain_hash.finalize().hex(),
            ciphertext_sha256=self._cipher_hash.finalize().hex(),
        )


class SegmentEncryptor(_SegmentCipher):
    """Encrypts one segment incrementally, so media can be sealed while it is being recorded."""

    _piece_overhead = 0

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Accept plaintext; return the ciphertext of every chunk now known not to be the last."""
        sealed = self.update_chunks(data)
        return sealed[0] if len(sealed) == 1 else b"".join(sealed)

    def update_chunks(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Like `update`, but one bytes object per sealed chunk, for `writelines`.

        Joining a megabyte write into one new object costs more than encrypting it (fresh pages
        from the allocator), so bulk writers should prefer this.
        """
        self._check_open()
        return [self._seal(chunk, last=False) for chunk in self._chunker.split(data)]

    def finalize(self) -> bytes:
        """Seal what remains as the final chunk (empty only if the whole segment is empty)."""
        self._check_open()
        final = self._seal(self._chunker.rest(), last=True)
        self._finish()
        return final

    def _seal(self, chunk: bytes | memoryview, *, last: bool) -> bytes:
        sealed = self._aead.encrypt(chunk_nonce(self._counter, last=last), chunk, None)
        self._counter += 1
        self._plain_hash.update(chunk)
        self._cipher_hash.update(sealed)
        self._plain_size += len(chunk)
        self._cipher_size += len(sealed)
        return sealed


class SegmentDecryptor(_SegmentCipher):
    """Decrypts one segment incrementally; plaintext is released only after its chunk verifies."""

    _piece_overhead = TAG_SIZE

    def update(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Accept ciphertext; return the verified plaintext of every complete non-final chunk."""
        self._check_open()
        self._cipher_hash.update(ciphertext)
        self._cipher_size += len(ciphertext)
        opened = [self._open(chunk, last=False) for chunk in self._chunker.split(ciphertext)]
        return opened[0] if len(opened) == 1 else b"".join(opened)

    def finalize(self) -> bytes:
        """Verify the final chunk and return its plaintext; raise if the segment is incomplete."""
        self._check_open()
        rest = self._chunker.rest()
        if len(rest) < TAG_SIZE:
            raise TruncatedSegmentError(self._counter)
        if len(rest) == TAG_SIZE and self._counter > 0:
            # A conforming writer never ends with an empty chunk after data (the final chunk takes
            # the last 1..chunk_size bytes); rejecting it keeps every plaintext's encoding unique.
            raise SegmentError(f"chunk {self._counter}: empty final chunk after data")
        try:
            final = self._open(rest, last=True)
        except ChunkAuthenticationError:
            # Tell "cut off at a chunk boundary" apart from "altered": the same bytes verifying as
            # a middle chunk means the stream simply stops before its final chunk.
            if self._verifies(rest, last=False):
                raise TruncatedSegmentError(self._counter + 1) from None
            raise
        self._finish()
        return final

    def _open(self, chunk: bytes | memoryview, *, last: bool) -> bytes:
        try:
            plain = self._aead.decrypt(chunk_nonce(self._counter, last=last), chunk, None)
        except InvalidTag:
            raise ChunkAuthenticationError(self._counter) from None
        self._counter += 1
        self._plain_hash.update(plain)
        self._plain_size += len(plain)
        return plain

    def _verifies(self, chunk: bytes, *, last: bool) -> bool:
        try:
            self._aead.decrypt(chunk_nonce(self._counter, last=last), chunk, None)
        except InvalidTag:
            return False
        return True


def encrypt_segment(
    data_key: bytes,
    archive_id: UUID,
    index: int,
    plaintext: bytes,
    *,
    chunk_size: int = CHUNK_SIZE,
    key_info: bytes = SEGMENT_KEY_INFO,
) -> tuple[bytes, SegmentDigest]:
    """One-shot encryption of a whole segment or attachment held in memory."""
    encryptor = SegmentEncryptor(
        data_key, archive_id, index, chunk_size=chunk_size, key_info=key_info
    )
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext, encryptor.digest


def decrypt_segment(
    decryptor: SegmentDecryptor, ciphertext: Iterable[bytes | bytearray | memoryview]
) -> Iterator[bytes]:
    """Yield verified plaintext from ciphertext pieces of any size.

    Raises SegmentError (at the latest after the last piece) if the segment is altered or
    incomplete; everything yielded before that has verified, but the segment as a whole is only
    authentic once the iterator is exhausted. `decryptor.digest` then holds sizes and hashes.
    """
    for piece in ciphertext:
        plain = decryptor.update(piece)
        if plain:
            yield plain
    final = decryptor.finalize()
    if final:
        yield final
