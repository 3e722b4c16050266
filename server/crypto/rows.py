"""Per-row envelope encryption of database records that must not be readable from a copy.

Each row gets a fresh AES-256-GCM data key, wrapped by a keyring (the envelope scheme and key
file format of recordings, docs/archive-format.md section 6). The caller's associated data names
the row, so a sealed blob moved to another row does not decrypt. Identity checks and customer
signatures use it, each with a keyring file of its own so they are rotated and escrowed apart.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recorder.seal.keyring import LocalKeyring, WrappedKey

NONCE_SIZE = 12


@dataclass(frozen=True)
class SealedRow:
    """What a row stores: the keyring's key id, the wrapped data key, nonce + ciphertext."""

    key_id: str
    wrapped_key: bytes
    sealed: bytes


class RowSealer:
    def __init__(self, keyring_path: Path, *, create: bool = True) -> None:
        # Created at first run (0600), never overwritten: see LocalKeyring.open. Without
        # `create`, a missing keyring raises KeyringMissing.
        self._keyring = LocalKeyring.open(keyring_path, create=create)

    def seal(self, row_id: uuid.UUID, aad: bytes, plaintext: bytes) -> SealedRow:
        """CPU work: call it from a thread."""
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self._keyring.wrap(data_key, row_id)
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return SealedRow(wrapped.key_id, wrapped.nonce + wrapped.ciphertext, sealed)

    def open(self, row_id: uuid.UUID, aad: bytes, row: SealedRow) -> bytes:
        """CPU work: call it from a thread. Raises on a wrong key, row or tampered bytes."""
        wrapped = WrappedKey(
            key_id=row.key_id,
            nonce=row.wrapped_key[:NONCE_SIZE],
            ciphertext=row.wrapped_key[NONCE_SIZE:],
        )
        data_key = self._keyring.unwrap(wrapped, row_id)
        nonce, ciphertext = row.sealed[:NONCE_SIZE], row.sealed[NONCE_SIZE:]
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
