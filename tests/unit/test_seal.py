"""Streaming encryption, key wrapping, signing, canonical JSON and the manifest model."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from uuid import UUID

import pytest

from recorder.seal.canonical import CanonicalJsonError, canonical_json, parse_json
from recorder.seal.keyring import (
    KeyringInsecure,
    KeyringMissing,
    KeyUnwrapError,
    LocalKeyring,
    UnknownKeyId,
    WrappedKey,
    generate_data_key,
)
from recorder.seal.signing import Signer, load_public_keys, public_key_id, verify
from recorder.seal.stream import (
    TAG_SIZE,
    ChunkAuthenticationError,
    SegmentDecryptor,
    SegmentEncryptor,
    SegmentError,
    TruncatedSegmentError,
    chunk_nonce,
    decrypt_segment,
    encrypt_segment,
)

KEY = bytes(range(32))
ARCHIVE = UUID("00000000-0000-4000-8000-000000000001")
OTHER_ARCHIVE = UUID("00000000-0000-4000-8000-000000000002")
CHUNK = 64


def _decrypt(ciphertext: bytes, *, index: int = 0, archive: UUID = ARCHIVE) -> bytes:
    decryptor = SegmentDecryptor(KEY, archive, index, chunk_size=CHUNK)
    return b"".join(decrypt_segment(decryptor, [ciphertext]))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("write", [1, 7, CHUNK, 1000])
def test_round_trip_for_any_write_pattern(size: int, write: int) -> None:
    plaintext = os.urandom(size)
    encryptor = SegmentEncryptor(KEY, ARCHIVE, 5, chunk_size=CHUNK)
    pieces = [encryptor.update(plaintext[i : i + write]) for i in range(0, size, write)]
    ciphertext = b"".join(pieces) + encryptor.finalize()

    chunks = max(1, -(-size // CHUNK))
    assert len(ciphertext) == size + chunks * TAG_SIZE
    decryptor = SegmentDecryptor(KEY, ARCHIVE, 5, chunk_size=CHUNK)
    feed = [ciphertext[i : i + write] for i in range(0, len(ciphertext), write)]
    assert b"".join(decrypt_segment(decryptor, feed)) == plaintext
    assert decryptor.digest == encryptor.digest
    assert encryptor.digest.plaintext_size == size
    assert encryptor.digest.ciphertext_size == len(ciphertext)


def test_update_emits_only_chunks_known_not_to_be_last() -> None:
    encryptor = SegmentEncryptor(KEY, ARCHIVE, 0, chunk_size=CHUNK)
    assert encryptor.update(b"a" * CHUNK) == b""  # could still be the final chunk
    assert len(encryptor.update(b"b")) == CHUNK + TAG_SIZE
    assert len(encryptor.finalize()) == 1 + TAG_SIZE
    with pytest.raises(RuntimeError):
        encryptor.update(b"more")


def test_nonce_layout() -> None:
    assert chunk_nonce(0, last=False) == bytes(12)
    assert chunk_nonce(1, last=True) == bytes(10) + b"\x01\x01"
    assert chunk_nonce(0x0102, last=False) == bytes(9) + b"\x01\x02\x00"


def test_truncation_at_a_chunk_boundary_is_named() -> None:
    ciphertext, _ = encrypt_segment(KEY, ARCHIVE, 0, b"x" * (3 * CHUNK + 1), chunk_size=CHUNK)
    with pytest.raises(TruncatedSegmentError, match="no final chunk"):
        _decrypt(ciphertext[: 2 * (CHUNK + TAG_SIZE)])
    with pytest.raises(TruncatedSegmentError):
        _decrypt(b"")


def test_reordered_chunks_fail() -> None:
    ciphertext, _ = encrypt_segment(KEY, ARCHIVE, 0, os.urandom(3 * CHUNK), chunk_size=CHUNK)
    size = CHUNK + TAG_SIZE
    swapped = ciphertext[size : 2 * size] + ciphertext[:size] + ciphertext[2 * size :]
    with pytest.raises(ChunkAuthenticationError, match="chunk 0"):
        _decrypt(swapped)


def test_appended_data_fails() -> None:
    ciphertext, _ = encrypt_segment(KEY, ARCHIVE, 0, b"x" * 10, chunk_size=CHUNK)
    other, _ = encrypt_segment(KEY, ARCHIVE, 0, b"y" * 10, chunk_size=CHUNK)
    with pytest.raises(SegmentError):
        _decrypt(ciphertext + other)


def test_segment_bound_to_position_and_archive() -> None:
    ciphertext, _ = encrypt_segment(KEY, ARCHIVE, 2, b"media", chunk_size=CHUNK)
    with pytest.raises(ChunkAuthenticationError):
        _decrypt(ciphertext, index=3)
    with pytest.raises(ChunkAuthenticationError):
        _decrypt(ciphertext, index=2, archive=OTHER_ARCHIVE)
    assert _decrypt(ciphertext, index=2) == b"media"


def test_no_plaintext_released_before_its_tag_verifies() -> None:
    ciphertext, _ = encrypt_segment(KEY, ARCHIVE, 0, b"z" * (2 * CHUNK + 3), chunk_size=CHUNK)
    tampered = bytearray(ciphertext)
    tampered[CHUNK + TAG_SIZE + 3] ^= 1  # second chunk
    decryptor = SegmentDecryptor(KEY, ARCHIVE, 0, chunk_size=CHUNK)
    assert decryptor.update(bytes(tampered[: CHUNK + TAG_SIZE])) == b""  # may be the final one
    assert (
        decryptor.update(bytes(tampered[CHUNK + TAG_SIZE : CHUNK + TAG_SIZE + 1])) == b"z" * CHUNK
    )
    with pytest.raises(ChunkAuthenticationError, match="chunk 1"):
        decryptor.update(bytes(tampered[CHUNK + TAG_SIZE + 1 :]))


def test_empty_final_chunk_after_data_is_rejected() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from recorder.seal.stream import derive_segment_key

    aead = AESGCM(derive_segment_key(KEY, ARCHIVE, 0))
    forged = aead.encrypt(chunk_nonce(0, last=False), b"a" * CHUNK, None)
    forged += aead.encrypt(chunk_nonce(1, last=True), b"", None)
    with pytest.raises(SegmentError, match="empty final chunk"):
        _decrypt(forged)


# --- keyring -------------------------------------------------------------------------------------


def test_keyring_created_private_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    keyring = LocalKeyring.open(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data_key = generate_data_key()
    old = keyring.wrap(data_key, ARCHIVE)
    first = keyring.current_key_id
    assert old.key_id == first

    new_id = keyring.rotate()
    assert keyring.current_key_id == new_id != first
    assert keyring.key_ids == [first, new_id]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyring.unwrap(old, ARCHIVE) == data_key
    assert keyring.wrap(data_key, ARCHIVE).key_id == new_id
    assert LocalKeyring.open(path).unwrap(old, ARCHIVE) == data_key


def test_keyring_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path, create=True)
    before = path.read_bytes()
    LocalKeyring.open(path, create=True)
    assert path.read_bytes() == before


def test_keyring_missing_says_how_to_restore(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "keyring.json"
    with pytest.raises(KeyringMissing, match="restore") as raised:
        LocalKeyring.open(path)
    assert str(path) in str(raised.value)
    assert not path.exists()


def test_keyring_refuses_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path, create=True)
    path.chmod(0o644)
    with pytest.raises(KeyringInsecure, match="chmod 600"):
        LocalKeyring.open(path)


def test_unwrap_errors(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = LocalKeyring.open(path, create=True)
    wrapped = keyring.wrap(generate_data_key(), ARCHIVE)
    with pytest.raises(KeyUnwrapError):
        keyring.unwrap(wrapped, OTHER_ARCHIVE)
    tampered = WrappedKey(wrapped.key_id, wrapped.nonce, bytes(48))
    with pytest.raises(KeyUnwrapError):
        keyring.unwrap(tampered, ARCHIVE)
    unknown = WrappedKey("kek-0000000000000000", wrapped.nonce, wrapped.ciphertext)
    with pytest.raises(UnknownKeyId, match="kek-0000000000000000") as raised:
        keyring.unwrap(unknown, ARCHIVE)
    assert str(path) in str(raised.value)
    other = LocalKeyring.open(tmp_path / "other.json", create=True)
    with pytest.raises(UnknownKeyId):
        other.unwrap(wrapped, ARCHIVE)


# --- signing -------------------------------------------------------------------------------------


def test_signing_key_created_private_and_published(tmp_path: Path) -> None:
    path = tmp_path / "signing" / "manifest-signing.pem"
    signer = Signer.open(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    again = Signer.open(path, create=True)
    assert path.read_bytes() == before
    assert again.key_id == signer.key_id
    assert len(signer.key_id) == 16

    published = signer.publish(tmp_path / "public")
    assert published.name == f"{signer.key_id}.pem"
    assert signer.publish(tmp_path / "public") == published
    assert public_key_id(published.read_bytes()) == signer.key_id
    assert load_public_keys(tmp_path / "public") == {signer.key_id: signer.public_key_pem()}

    signature = signer.sign(b"manifest")
    assert len(signature) == 64
    assert verify(signer.public_key_pem(), signature, b"manifest")
    assert not verify(signer.public_key_pem(), signature, b"manifesT")


# --- canonical JSON ------------------------------------------------------------------------------


def test_canonical_json() -> None:
    value = {"b": [1, "x", None, True], "a": {"é": '王\n\u001f"\\/', "\U0001f600": 0, "\uffff": 1}}
    assert (
        canonical_json(value)
        == (
            '{"a":{"é":"王\\n\\u001f\\"\\\\/","\U0001f600":0,"\uffff":1},"b":[1,"x",null,true]}'
        ).encode()
    )
    for bad in (1.5, 2**53, "\ud800"):
        with pytest.raises(CanonicalJsonError):
            canonical_json({"x": bad})


def test_parse_json_rejects_duplicates_and_floats() -> None:
    with pytest.raises(CanonicalJsonError, match="duplicate"):
        parse_json(b'{"a":1,"a":2}')
    with pytest.raises(CanonicalJsonError, match="float"):
        parse_json(b'{"a":1.0}')
    assert parse_json(json.dumps({"a": [1]}).encode()) == {"a": [1]}
