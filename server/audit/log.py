"""The audit log service: appends entries to the shared database, writes signed checkpoints.

Appends from many worker processes serialize on the primary key: each writer reads the head and
inserts head + 1 with the head's hash as its previous hash; of two writers racing for a position
one insert fails and that writer reads the new head and tries again. No position is ever skipped
(a failed insert leaves nothing behind), so the sequence is gapless and the chain never forks.

A failed append raises `AuditUnavailable` (HTTP 503 `audit_unavailable`): for a bank an action
that cannot be audited must not happen, so callers append on the request path before they hand
out the action's result (docs/audit-log.md, "When the log cannot be written").
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.canonical import CanonicalJsonError, canonical_json
from recorder.seal.signing import Signer
from server.audit.actions import ACTIONS, FORBIDDEN_DETAIL_KEYS
from server.audit.chain import (
    GENESIS_HASH,
    ChainWalker,
    Checkpoint,
    CheckpointFields,
    Entry,
    EntryFields,
    Report,
    Verifier,
)
from server.background import cancel_and_wait
from server.db.engine import DbSession
from server.db.models import AuditCheckpoint, AuditEntry, utcnow
from server.errors import ApiError

log = structlog.get_logger(__name__)

CHECKPOINT_EVERY = 100
CHECKPOINT_INTERVAL_SECONDS = 15 * 60.0
# Enough for a burst of writers from every worker on SQLite, where a writer whose snapshot is
# stale fails at once (SQLITE_BUSY_SNAPSHOT) instead of waiting.
MAX_ATTEMPTS = 25
PAGE = 1000


class AuditUnavailable(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503,
            "audit_unavailable",
            "The audit log cannot be written right now, so this action was not completed. "
            "Please try again shortly; if it keeps happening, tell the operator.",
        )


class AuditChainBroken(Exception):
    """A checkpoint was refused because the entries since the last one do not verify."""


def entry_from_row(row: AuditEntry) -> Entry:
    return Entry(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        actor_role=row.actor_role,
        action=row.action,
        target=row.target,
        detail=row.detail,
        address=row.address,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


def checkpoint_from_row(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(
        seq=row.seq,
        entry_hash=row.entry_hash,
        at=row.at,
        key_id=row.key_id,
        signature=row.signature,
    )


def _check_detail(action: str, detail: dict[str, Any]) -> None:
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not in server/audit/actions.py")
    if FORBIDDEN_DETAIL_KEYS & set(detail):
        raise ValueError(f"audit detail of {action} names a secret: {sorted(detail)}")
    try:
        canonical_json(detail)  # no floats, no non-JSON values: the hash must be reproducible
    except CanonicalJsonError as error:
        raise ValueError(f"audit detail of {action}: {error}") from None


def _busy(error: OperationalError) -> bool:
    # SQLite's "database is locked" / SQLITE_BUSY_SNAPSHOT are worth retrying; a missing table or
    # an unreachable server are not, and fail at once.
    text = str(error.orig).lower()
    return "locked" in text or "busy" in text


class AuditLog:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        signer: Signer | None = None,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
    ) -> None:
        self._db = db
        self._signer = signer  # None: this process appends but never checkpoints (the CLI)
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        # Appends of this process queue here rather than collide with each other in the database.
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    # -- writing -----------------------------------------------------------------------------

    async def append(
        self,
        action: str,
        *,
        actor: str,
        actor_role: str,
        target: str = "",
        detail: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> Entry:
        """Append one entry, or raise AuditUnavailable: the caller's action must then fail."""
        detail = detail or {}
        _check_detail(action, detail)
        entry = await self._append(action, actor, actor_role, target, detail, address)
        if self._signer is not None and entry.seq % self._checkpoint_every == 0:
            # The entry is written; a late checkpoint is caught up by the timer, so no failure here.
            try:
                await self.checkpoint()
            except Exception:
                log.exception("audit_checkpoint_failed", seq=entry.seq)
        return entry

    async def append_fact(
        self,
        action: str,
        *,
        actor: str,
        actor_role: str,
        target: str = "",
        detail: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> Entry | None:
        """Append an entry about something that already happened and cannot be refused (a seal).

        A failure is logged at error level, with the whole entry, instead of raised: undoing the
        caller's work would not undo the fact.
        """
        try:
            return await self.append(
                action,
                actor=actor,
                actor_role=actor_role,
                target=target,
                detail=detail,
                address=address,
            )
        except AuditUnavailable:
            log.error(
                "audit_fact_not_logged",
                action=action,
                actor=actor,
                actor_role=actor_role,
                target=target,
                detail=detail,
            )
            return None

    async def _append(
        self,
        action: str,
        actor: str,
        actor_role: str,
        target: str,
        detail: dict[str, Any],
        address: str | None,
    ) -> Entry:
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                try:
                    async with self._db() as db, db.begin():
                        head = (
                            await db.execute(
                                select(AuditEntry.seq, AuditEntry.entry_hash)
                                .order_by(AuditEntry.seq.desc())
                                .limit(1)
                            )
                        ).first()
                        fields = EntryFields(
                            seq=head[0] + 1 if head else 1,
                            at=utcnow(),
                            actor=actor,
                            actor_role=actor_role,
                            action=action,
                            target=target,
                            detail=detail,
                            address=address,
                            prev_hash=head[1] if head else GENESIS_HASH,
                        )
                        digest = fields.compute_hash()
                        db.add(
                            AuditEntry(
                                seq=fields.seq,
                                at=fields.at,
                                actor=actor,
                                actor_role=actor_role,
                                action=action,
                                target=target,
                                detail=detail,
                                address=address,
                                prev_hash=fields.prev_hash,
                                entry_hash=digest,
                            )
                        )
                    return Entry(**vars(fields), entry_hash=digest)
                except (IntegrityError, OperationalError) as error:
                    if isinstance(error, OperationalError) and not _busy(error):
                        log.exception("audit_append_failed", action=action, target=target)
                        raise AuditUnavailable() from None
                    # Another writer took this position (or holds the SQLite write lock).
                    log.debug("audit_append_retry", attempt=attempt, error=str(error))
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
                except (SQLAlchemyError, OSError):
                    log.exception("audit_append_failed", action=action, target=target)
                    raise AuditUnavailable() from None
            log.error("audit_append_gave_up", action=action, target=target, attempts=MAX_ATTEMPTS)
            raise AuditUnavailable()

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head (None when the log is empty or this process cannot sign).

        The entries since the last checkpoint are verified first: a checkpoint vouches for the
        chain up to its entry, so it must never be put on an edited log.
        """
        if self._signer is None:
            return None
        async with self._db() as db:
            last = await db.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            )
        walker = ChainWalker((last.seq, last.entry_hash) if last is not None else None)
        async for entry in self.entries(after=last.seq if last is not None else 0):
            walker.add(entry)
        if walker.problem is not None:
            raise AuditChainBroken(walker.problem)
        if walker.count == 0:
            return checkpoint_from_row(last) if last is not None else None
        fields = CheckpointFields(walker.last_seq, walker.last_hash, utcnow(), self._signer.key_id)
        signed = Checkpoint(**vars(fields), signature=self._signer.sign(fields.canonical()).hex())
        try:
            async with self._db() as db, db.begin():
                db.add(
                    AuditCheckpoint(
                        seq=signed.seq,
                        entry_hash=signed.entry_hash,
                        at=signed.at,
                        key_id=signed.key_id,
                        signature=signed.signature,
                    )
                )
        except IntegrityError:
            # Another worker checkpointed the same head first: one checkpoint per position.
            async with self._db() as db:
                theirs = await db.scalar(
                    select(AuditCheckpoint).where(AuditCheckpoint.seq == signed.seq)
                )
            return checkpoint_from_row(theirs) if theirs is not None else None
        log.info("audit_checkpoint", seq=signed.seq, entry_hash=signed.entry_hash)
        return signed

    # -- reading -----------------------------------------------------------------------------

    async def entries(self, after: int = 0) -> AsyncIterator[Entry]:
        """Every entry with seq > `after`, in order, a page at a time."""
        while True:
            async with self._db() as db:
                rows = list(
                    await db.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.seq > after)
                        .order_by(AuditEntry.seq)
                        .limit(PAGE)
                    )
                )
            for row in rows:
                yield entry_from_row(row)
            if len(rows) < PAGE:
                return
            after = rows[-1].seq

    async def tail(self, count: int) -> list[Entry]:
        async with self._db() as db:
            rows = await db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(count))
            return [entry_from_row(row) for row in reversed(list(rows))]

    async def checkpoints(self) -> list[Checkpoint]:
        async with self._db() as db:
            rows = await db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
            return [checkpoint_from_row(row) for row in rows]

    async def verify(self, public_keys: dict[str, bytes]) -> Report:
        verifier = Verifier(await self.checkpoints(), public_keys)
        async for entry in self.entries():
            verifier.add(entry)
        return verifier.finish()

    # -- the periodic checkpoint -------------------------------------------------------------

    async def start(self) -> None:
        if self._signer is not None and self._timer is None:
            self._timer = asyncio.create_task(self._checkpoints())

    async def stop(self) -> None:
        if self._timer is not None:
            await cancel_and_wait(self._timer)
            self._timer = None
            # Stopping cleanly leaves the newest entries covered by a signature.
            await self._checkpoint_quietly()

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            await self._checkpoint_quietly()

    async def _checkpoint_quietly(self) -> None:
        try:
            await self.checkpoint()
        except Exception:
            log.exception("audit_checkpoint_failed")
