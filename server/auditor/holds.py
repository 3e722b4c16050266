"""Legal holds on whole archives: every object (segments, attachments, manifest, signature,
reports) is held in the store through S3 Object Lock, and the state and reason are kept in the
database. Changes of one archive's hold are made one at a time, in every worker (`changing`).

And on sessions that were never recorded (`SessionHolds`): nothing of them is in the store, so
the hold is the database row alone, which `vteller archive purge` obeys, under the same kind of
lock, before it erases the session's identity records and its customer's data."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket
from server.db.engine import DbSession
from server.db.models import HoldColumns, LegalHoldRecord, SessionHoldRecord, utcnow

# Object Lock calls are one small request per object; a few at a time keeps a long recording
# (hundreds of two-second segments) quick without flooding the store.
PARALLEL_CALLS = 8
# How often a change looks again whether another change has let go of the archive.
LOCK_POLL_SECONDS = 0.05


class HoldError(Exception):
    """The hold cannot be changed (nothing stored yet, or already in that state)."""


@dataclass(frozen=True)
class HoldState:
    held: bool
    reason: str | None
    changed_by: str | None
    changed_at: datetime | None
    objects: int


class _Holds:
    """What the holds of archives and of sessions share: the lock on one, and its recorded state."""

    _lock: str  # the lock's name, before "/" and the key
    _model: type[HoldColumns]  # a mapped class

    def __init__(self, db: async_sessionmaker[DbSession]) -> None:
        self._db = db

    def changing(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold off every other change of `key`'s hold and its purge, in every worker on this
        database (and `vteller archive purge`), until the block ends."""
        return hold_lock(self._db, f"{self._lock}/{key}")

    async def state(self, key: str) -> HoldState:
        async with self._db() as db:
            row = await db.get(self._model, key)
        if row is None:
            return HoldState(False, None, None, None, 0)
        objects = row.objects if isinstance(row, LegalHoldRecord) else 0
        return HoldState(row.held, row.reason, row.changed_by, row.changed_at, objects)

    async def _record(
        self, key: str, held: bool, reason: str, user_id: str, objects: int = 0
    ) -> HoldState:
        async with self._db() as db, db.begin():
            row = await db.get(self._model, key)
            if row is None:
                row = self._new(key)
                db.add(row)
            row.held = held
            row.reason = reason
            row.changed_by = user_id
            row.changed_at = utcnow()
            if isinstance(row, LegalHoldRecord):
                row.objects = objects
        return HoldState(held, reason, user_id, row.changed_at, objects)

    def _new(self, key: str) -> HoldColumns:
        raise NotImplementedError


class LegalHolds(_Holds):
    """Holds on archives. Two changes of one archive's hold (set, clear, extend) interleaving
    their calls to the store would leave objects held that the database says are not, or the
    reverse: each is made under `changing`, and so is the archive's purge."""

    _lock = "vteller/legal-hold"
    _model = LegalHoldRecord

    def __init__(self, db: async_sessionmaker[DbSession], bucket: ArchiveBucket) -> None:
        super().__init__(db)
        self._bucket = bucket

    def _new(self, key: str) -> LegalHoldRecord:
        return LegalHoldRecord(archive_id=key)

    async def objects(self, archive_id: str) -> list[str]:
        names = await self._bucket.list(archive_prefix(archive_id))
        if not names:
            raise HoldError("nothing of this archive is in the store yet; try again shortly")
        return names

    async def apply(self, archive_id: str, names: list[str], held: bool, reason: str) -> None:
        """Set or clear the hold on every one of `names` in the store."""
        limit = asyncio.Semaphore(PARALLEL_CALLS)

        async def one(name: str) -> None:
            async with limit:
                await self._bucket.set_legal_hold(name, held, reason if held else None)

        await asyncio.gather(*(one(name) for name in names))

    async def extend(self, archive_id: str, names: list[str]) -> bool:
        """Hold `names` too if their archive is under legal hold: objects added after the hold
        (a later compliance report) are evidence of the same matter. True if it was held."""
        async with self.changing(archive_id):
            current = await self.state(archive_id)
            if not current.held:
                return False
            await self.apply(archive_id, names, True, current.reason or "")
            count = len(await self._bucket.list(archive_prefix(archive_id)))
            async with self._db() as db, db.begin():
                row = await db.get(LegalHoldRecord, archive_id)
                if row is not None and row.held:
                    row.objects = max(row.objects, count)
            return True

    async def record(
        self, archive_id: str, held: bool, reason: str, user_id: str, objects: int
    ) -> HoldState:
        return await self._record(archive_id, held, reason, user_id, objects)


class SessionHolds(_Holds):
    """Holds on sessions without a sealed archive (server/auditor/purge.py keeps them). Under
    `changing`, as the session's purge (`purge_session`): a hold set while the purge erases
    would be a hold on nothing, and a purge that read the state before the hold was set would
    erase what it holds."""

    _lock = "vteller/session-hold"
    _model = SessionHoldRecord

    def _new(self, key: str) -> SessionHoldRecord:
        return SessionHoldRecord(session_id=key)

    async def record(self, session_id: str, held: bool, reason: str, user_id: str) -> HoldState:
        return await self._record(session_id, held, reason, user_id)


@asynccontextmanager
async def hold_lock(db: async_sessionmaker[DbSession], name: str) -> AsyncIterator[None]:
    """An exclusive lock on `name` across every worker (and `vteller archive purge`) on this
    database, until the block ends: what a hold and a purge of the same thing take."""
    lock_id = hashlib.sha256(name.encode()).digest()[:8]
    async with db() as session:
        engine = session.get_bind().engine
    if engine.dialect.name == "postgresql":
        # A signed 64-bit advisory lock key, apart from the others (auth/ratelimit.py).
        async with _advisory_lock(db, int.from_bytes(lock_id, "big", signed=True)):
            yield
        return
    # SQLite: every worker on the file runs on this machine. SQLite's own write lock, held
    # for the store calls, would stall every other writer: a file lock next to the database
    # instead, which the kernel lets go if the worker dies. Names share 256 files by the key's
    # first byte: one file per archive would pile up forever (every report extends), and two
    # names on one file merely wait for each other's change.
    path = Path(f"{engine.url.database}.holds") / f"{lock_id[0]:02x}.lock"
    fd = await asyncio.to_thread(_open_lock, path)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)


@asynccontextmanager
async def _advisory_lock(db: async_sessionmaker[DbSession], key: int) -> AsyncIterator[None]:
    """PostgreSQL: a transaction-scoped advisory lock, let go with the transaction, or with the
    connection if the worker dies."""
    while True:
        async with db() as session, session.begin():
            # The transaction stays idle while the store is called, for as long as a long
            # recording's objects take: a DBA's idle_in_transaction_session_timeout would end
            # it, and with it the lock, in the middle of the change.
            await session.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            taken = await session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}
            )
            if taken:
                yield
                return
        # Polled like the SQLite lock, not waited for in pg_advisory_xact_lock: a waiter
        # would hold a pooled connection (and a server's connection slot) all along.
        await asyncio.sleep(LOCK_POLL_SECONDS)


def _open_lock(path: Path) -> int:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
