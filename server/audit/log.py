"""The audit log service: appends entries to the shared database, writes signed checkpoints.

Appends from many worker processes serialize on the primary key: each writer reads the head and
inserts head + 1 with the head's hash as its previous hash; of two writers racing for a position
one insert fails and that writer reads the new head and tries again. No position is ever skipped
(a failed insert leaves nothing behind), so the sequence is gapless and the chain never forks.

A failed append raises `AuditUnavailable` (HTTP 503 `audit_unavailable`): for a bank an action
that cannot be audited must not happen, so callers append on the request path before they hand
out the action's result (docs/audit-log.md, "When the log cannot be written").

A checkpoint puts the signing key behind what the database says, so the writer signs only on top
of what it can check: the newest checkpoint's signature and entry, the spacing the writer itself
keeps, and this machine's record of what it signed last (in the data directory, where a
database-only attacker cannot reach). Anything else is refused and logged; entries are still
appended (docs/audit-log.md, "When a checkpoint is refused").
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.canonical import CanonicalJsonError, canonical_json
from recorder.seal.files import replace_private_file
from recorder.seal.signing import Signer
from server.audit.actions import ACTIONS, FORBIDDEN_DETAIL_KEYS, SYSTEM
from server.audit.chain import (
    CHECKPOINT_EVERY,
    GENESIS_HASH,
    ChainWalker,
    Checkpoint,
    CheckpointFields,
    Entry,
    EntryFields,
    Report,
    Verifier,
    checkpoint_entry_problem,
    checkpoint_signature_problem,
    signed_here_problem,
    unsigned_tail_problem,
)
from server.background import cancel_and_wait
from server.db.engine import DbSession
from server.db.models import AuditCheckpoint, AuditEntry, utcnow
from server.errors import ApiError

log = structlog.get_logger(__name__)

CHECKPOINT_INTERVAL_SECONDS = 15 * 60.0
# In the data directory: the last checkpoint this machine signed, {"seq": ..., "entry_hash": ...}.
SIGNED_HERE_FILE = "audit-signed.json"
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


class CheckpointRefused(Exception):
    """The writer will not sign: the log, its checkpoints or this machine's record disagree."""


class SignedHereUnreadable(Exception):
    """This machine's record of its last checkpoint exists but cannot be read."""


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


def _read_signed_here(path: Path) -> tuple[int, str] | None:
    try:
        record = json.loads(path.read_text("utf-8"))
        return int(record["seq"]), str(record["entry_hash"])
    except FileNotFoundError:
        return None  # this machine has not signed yet
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SignedHereUnreadable(f"cannot read {path}: {error}") from None


def _write_signed_here(path: Path, checkpoint: Checkpoint) -> None:
    record = {"seq": checkpoint.seq, "entry_hash": checkpoint.entry_hash}
    replace_private_file(path, json.dumps(record).encode())


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
        data_dir: Path | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
    ) -> None:
        self._db = db
        self._signer = signer  # None: this process appends but never checkpoints (the CLI)
        # None: no record of what this machine signed is kept or checked (tests of one service).
        self._signed_here = data_dir / SIGNED_HERE_FILE if data_dir is not None else None
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        # Appends of this process queue here rather than collide with each other in the database.
        self._lock = asyncio.Lock()
        # One checkpoint at a time per process: the timer, an append and stop() may meet.
        self._signing = asyncio.Lock()
        # The first entry at which this process checks that its interval has a checkpoint.
        self._due = checkpoint_every
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
        if self._signer is not None and entry.seq >= self._due:
            # Not only at the multiple itself: that entry may have come from the command line,
            # which cannot sign, or its checkpoint may have failed. The entry is written either
            # way, so nothing here fails the caller.
            await self._checkpoint_quietly(due=entry.seq)
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

    async def checkpoint(
        self, *, accept_unsigned: str | None = None, actor: str = SYSTEM
    ) -> Checkpoint | None:
        """Sign the current head (None when the log is empty or this process cannot sign).

        Raises CheckpointRefused unless the newest checkpoint holds (its signature and its entry),
        this machine's last checkpoint is still in the log, no whole interval since the newest
        checkpoint went unsigned, and the entries since it verify: a checkpoint vouches for the
        chain up to its entry, so it must never be put on an edited log. `accept_unsigned` is an
        operator's reason to sign even though checkpoints are missing (after an incident was
        looked into); it is logged as an entry by `actor` (the operator: server.commands
        `operator()`), and the gap stays visible to `verify`.
        """
        if self._signer is None:
            return None
        async with self._signing:
            return await self._checkpoint(self._signer, None, accept_unsigned, actor)

    async def _checkpoint(
        self, signer: Signer, due: int | None, accept_unsigned: str | None, actor: str
    ) -> Checkpoint | None:
        every = self._checkpoint_every
        # The record before the database: it is written after its checkpoint is committed, so the
        # database read next holds at least that checkpoint, even if another worker just wrote it.
        signed_here = await self._read_signed_here()
        async with self._db() as db:
            newest_row = await db.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            )
            head: int = await db.scalar(select(func.max(AuditEntry.seq))) or 0
        newest = checkpoint_from_row(newest_row) if newest_row is not None else None
        signed = newest.seq if newest is not None else 0
        if due is not None and signed // every >= due // every:
            self._due = (signed // every + 1) * every  # another worker signed this interval
            return newest
        if newest is not None:
            # One signing key per deployment (server/crypto/deployment_keys.py): this one.
            own_key = {signer.key_id: signer.public_key_pem()}
            problem = checkpoint_signature_problem(newest, own_key) or checkpoint_entry_problem(
                newest, await self._entry_hash(newest.seq)
            )
            if problem is not None:
                raise CheckpointRefused(problem)
        missing = await self._missing_checkpoint(signed, head, signed_here)
        if missing is not None and accept_unsigned is None:
            raise CheckpointRefused(missing)
        walker = ChainWalker((signed, newest.entry_hash) if newest is not None else None)
        async for entry in self.entries(after=signed, until=head):
            walker.add(entry)
        if missing is not None and walker.problem is None:
            forced = await self._append(
                "audit.checkpoint_forced",
                actor,
                SYSTEM,
                "",
                {"reason": accept_unsigned, "refused": missing},
                None,
            )
            async for entry in self.entries(after=head, until=forced.seq):
                walker.add(entry)
        if walker.problem is not None:
            raise CheckpointRefused(
                f"the log does not verify since the last checkpoint: {walker.problem}"
            )
        if walker.count == 0:
            return newest
        fields = CheckpointFields(walker.last_seq, walker.last_hash, utcnow(), signer.key_id)
        checkpoint = Checkpoint(**vars(fields), signature=signer.sign(fields.canonical()).hex())
        try:
            async with self._db() as db, db.begin():
                db.add(
                    AuditCheckpoint(
                        seq=checkpoint.seq,
                        entry_hash=checkpoint.entry_hash,
                        at=checkpoint.at,
                        key_id=checkpoint.key_id,
                        signature=checkpoint.signature,
                    )
                )
        except IntegrityError:
            # Another worker checkpointed the same head first: one checkpoint per position.
            async with self._db() as db:
                theirs = await db.scalar(
                    select(AuditCheckpoint).where(AuditCheckpoint.seq == checkpoint.seq)
                )
            return checkpoint_from_row(theirs) if theirs is not None else None
        self._due = (checkpoint.seq // every + 1) * every
        log.info("audit_checkpoint", seq=checkpoint.seq, entry_hash=checkpoint.entry_hash)
        if self._signed_here is not None:
            try:
                await asyncio.to_thread(_write_signed_here, self._signed_here, checkpoint)
            except OSError:
                # The checkpoint stands; the record just stays at an older, still true position.
                log.exception("audit_signed_here_not_written", path=str(self._signed_here))
        return checkpoint

    async def _missing_checkpoint(
        self, signed: int, head: int, signed_here: tuple[int, str] | None
    ) -> str | None:
        """Why checkpoints seem to have been removed: this machine's last one is gone, or a whole
        interval since the newest went unsigned. Innocently, the writer could not sign for a while
        or the database was restored (see `accept_unsigned`)."""
        if signed_here is not None:
            here_hash = await self._entry_hash(signed_here[0])
            problem = signed_here_problem(signed_here, here_hash, signed)
            if problem is not None:
                return problem
        return unsigned_tail_problem(signed, head, self._checkpoint_every)

    async def _read_signed_here(self) -> tuple[int, str] | None:
        if self._signed_here is None:
            return None
        try:
            return await asyncio.to_thread(_read_signed_here, self._signed_here)
        except SignedHereUnreadable as error:
            raise CheckpointRefused(str(error)) from None

    async def _entry_hash(self, seq: int) -> str | None:
        async with self._db() as db:
            found: str | None = await db.scalar(
                select(AuditEntry.entry_hash).where(AuditEntry.seq == seq)
            )
            return found

    # -- reading -----------------------------------------------------------------------------

    async def entries(self, after: int, until: int) -> AsyncIterator[Entry]:
        """Every entry with `after` < seq <= `until`, in order, a page at a time."""
        while True:
            async with self._db() as db:
                rows = list(
                    await db.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.seq > after, AuditEntry.seq <= until)
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
        """Check the whole log (raises SignedHereUnreadable if this machine's record is broken).

        Read in the order they are written (the record, then checkpoints, then the head), so a
        log being appended to is seen as it was at one moment: no checkpoint or record past the
        entries read, no entry appended since that nobody had a chance to sign.
        """
        signed_here = None
        if self._signed_here is not None:
            signed_here = await asyncio.to_thread(_read_signed_here, self._signed_here)
        verifier = Verifier(
            await self.checkpoints(),
            public_keys,
            checkpoint_every=self._checkpoint_every,
            signed_here=signed_here,
        )
        async with self._db() as db:
            head = await db.scalar(select(func.max(AuditEntry.seq)))
        async for entry in self.entries(after=0, until=head or 0):
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

    async def _checkpoint_quietly(self, due: int | None = None) -> None:
        if self._signer is None:
            return
        try:
            async with self._signing:
                await self._checkpoint(self._signer, due, None, SYSTEM)
        except CheckpointRefused as refused:
            if due is not None:
                # A refusal does not pass by itself: ask again in the next interval, not at once.
                self._due = (due // self._checkpoint_every + 1) * self._checkpoint_every
            log.error(
                "audit_checkpoint_refused",
                problem=str(refused),
                fix="entries are still logged but not signed: run `vteller audit verify` and see "
                "docs/audit-log.md, 'When a checkpoint is refused'",
            )
        except Exception:
            log.exception("audit_checkpoint_failed")
