"""Identity check records: outcomes in the clear, personal and biometric detail encrypted.

A bank must be able to show later what was checked (card fields, scores, thresholds, model
versions, the evidence frames) but a copy of the database must not disclose it. Each record is
sealed under its own data key wrapped by the identity keyring (server/crypto/rows.py). The record
id and session id are the associated data, so a sealed blob moved to another row does not
decrypt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.crypto.rows import RowSealer, SealedRow
from server.db.engine import DbSession
from server.db.models import IdentityCheck


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
        self._sealer = RowSealer(keyring_path)

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
        document = {
            "detail": detail,
            "evidence": {e.name: base64.b64encode(e.jpeg).decode("ascii") for e in evidence},
        }
        plaintext = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
        row = self._sealer.seal(uuid.UUID(record_id), _aad(record_id, session_id), plaintext)
        return row.key_id, row.wrapped_key, row.sealed

    def _unseal(self, row: IdentityCheck) -> dict[str, Any]:
        plaintext = self._sealer.open(
            uuid.UUID(row.id),
            _aad(row.id, row.session_id),
            SealedRow(row.key_id, row.wrapped_key, row.sealed),
        )
        document: dict[str, Any] = json.loads(plaintext)
        return document
