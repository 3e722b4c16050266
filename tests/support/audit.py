"""Doing to the audit log what an attacker or an outage would: rewrite it behind the writer's back,
or make it unwritable for a while (actions that must be logged are then refused)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from server.audit.chain import EntryFields
from server.db.engine import DbSession
from server.db.models import AuditCheckpoint, AuditEntry
from tests.support.server import RunningServer


async def launder(
    db: async_sessionmaker[DbSession], seq: int, *, checkpoints_from: int = 0
) -> None:
    """What someone with write access to the database alone can do: edit entry `seq`, recompute
    every later hash so that the chain holds again, and delete the checkpoints (those at
    `checkpoints_from` or later) that would give the edit away."""
    async with db() as session, session.begin():
        rows = list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.seq >= seq).order_by(AuditEntry.seq)
            )
        )
        rows[0].target = "FORGED"
        previous = rows[0].prev_hash
        for row in rows:
            fields = EntryFields(
                row.seq,
                row.at,
                row.actor,
                row.actor_role,
                row.action,
                row.target,
                row.detail,
                row.address,
                previous,
            )
            row.prev_hash, row.entry_hash = previous, fields.compute_hash()
            previous = row.entry_hash
        await session.execute(
            delete(AuditCheckpoint).where(AuditCheckpoint.seq >= checkpoints_from)
        )


@asynccontextmanager
async def audit_log_away(server: RunningServer) -> AsyncIterator[None]:
    """Renames the audit table (on either database) and puts it back on the way out."""
    engine = create_async_engine(server.settings.effective_database_url)
    try:
        async with engine.begin() as db:
            await db.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
        try:
            yield
        finally:
            async with engine.begin() as db:
                await db.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    finally:
        await engine.dispose()
