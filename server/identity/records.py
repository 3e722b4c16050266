"""Identity check records: outcomes in the clear, personal and biometric detail encrypted.

A bank must be able to show later what was checked (card fields, scores, thresholds, model
versions, the evidence frames) but a copy of the database must not disclose it. Each record gets
a fresh AES-256-GCM data key, wrapped by the identity keyring (the same envelope scheme and key
file format as recordings, docs/archive-format.md section 6, in its own file so the two can be
rotated and escrowed separately). The record id and session id are the associated data, so a
sealed blob moved to another row does not decrypt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring, WrappedKey
from server.db.engine import DbSession
from server.db.models import IdentityCheck

NONCE_SIZE = 12


@dataclass(frozen=True)
class Evidence:
    """An evidence image (JPEG) and its SHA-256, which is what leaves the encrypted record."""

    name: str
    jpeg: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.jpeg).hexdigest()


@dataclass(frozen=True)
class OpenedCheck:
    id: str
    session_id: str
    step: str
    outcome: str
    reason: str
    detail: dict[str, Any]
    evidence: dict[str, bytes]


def _aad(record_id: str, session_id: str) -> bytes:
    return f"vteller/identity/v1\x00{record_id}\x00{session_id}".encode()


class IdentityRecords:
    def __init__(self, db: async_sessionmaker[DbSession], keyring_path: Path) -> None:
        self._db = db
        # Created at first run (0600), never overwritten: see LocalKeyring.open.
        self._keyring = LocalKeyring.open(keyring_path, create=True)

    async def add(
        self,
        session_id: str,
        participant_id: str | None,
        step: str,
        outcome: str,
        reason: str,
        detail: dict[str, Any],
        evidence: list[Evidence],
    ) -> IdentityCheck:
        record_id = str(uuid.uuid4())
        # Encrypting a few hundred kB of images is quick, but it is CPU work: off the loop.
        key_id, wrapped_key, sealed = await asyncio.to_thread(
            self._seal, record_id, session_id, detail, evidence
        )
        row = IdentityCheck(
            id=record_id,
            session_id=session_id,
            participant_id=participant_id,
            step=step,
            outcome=outcome,
            reason=reason,
            evidence_sha256=[e.sha256 for e in evidence],
            key_id=key_id,
            wrapped_key=wrapped_key,
            sealed=sealed,
        )
        async with self._db() as db, db.begin():
            db.add(row)
        return row

    async def attempts(self, session_id: str, step: str) -> int:
        async with self._db() as db:
            query = select(func.count()).where(
                IdentityCheck.session_id == session_id, IdentityCheck.step == step
            )
            return int(await db.scalar(query) or 0)

    async def for_session(self, session_id: str) -> list[IdentityCheck]:
        async with self._db() as db:
            query = select(IdentityCheck).where(IdentityCheck.session_id == session_id)
            return list(await db.scalars(query.order_by(IdentityCheck.at)))

    async def open(self, record_id: str) -> OpenedCheck:
        """Decrypt one record (operators and auditors; never sent to a customer)."""
        async with self._db() as db:
            row = await db.get(IdentityCheck, record_id)
        if row is None:
            raise KeyError(record_id)
        document = await asyncio.to_thread(self._unseal, row)
        return OpenedCheck(
            id=row.id,
            session_id=row.session_id,
            step=row.step,
            outcome=row.outcome,
            reason=row.reason,
            detail=document["detail"],
            evidence={k: base64.b64decode(v) for k, v in document["evidence"].items()},
        )

    def _seal(
        self, record_id: str, session_id: str, detail: dict[str, Any], evidence: list[Evidence]
    ) -> tuple[str, bytes, bytes]:
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self._keyring.wrap(data_key, uuid.UUID(record_id))
        document = {
            "detail": detail,
            "evidence": {e.name: base64.b64encode(e.jpeg).decode("ascii") for e in evidence},
        }
        nonce = secrets.token_bytes(NONCE_SIZE)
        plaintext = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
        sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext, _aad(record_id, session_id))
        return wrapped.key_id, wrapped.nonce + wrapped.ciphertext, sealed

    def _unseal(self, row: IdentityCheck) -> dict[str, Any]:
        wrapped = WrappedKey(
            key_id=row.key_id,
            nonce=row.wrapped_key[:NONCE_SIZE],
            ciphertext=row.wrapped_key[NONCE_SIZE:],
        )
        data_key = self._keyring.unwrap(wrapped, uuid.UUID(row.id))
        nonce, ciphertext = row.sealed[:NONCE_SIZE], row.sealed[NONCE_SIZE:]
        plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, _aad(row.id, row.session_id))
        document: dict[str, Any] = json.loads(plaintext)
        return document
