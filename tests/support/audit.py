"""Doing to the audit log what an attacker or an outage would: rewrite it behind the writer's back,
or make it unwritable for a while (actions that must be logged are then refused)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from server.audit.chain import EntryFields
from server.db.engine import DbSession
from server.db.models import AuditCheckpoint, AuditEntry
from tests.support.server import RunningServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-log.md"


def _doc_blocks(language: str) -> list[str]:
    # The blocks of section 6.1 are indented as part of a list item.
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", DOC.read_text("utf-8"), re.M | re.S)
    return [re.sub(rf"^{indent}", "", code, flags=re.M) for indent, code in blocks]


def documented_audit_check() -> Callable[..., list[str]]:
    """`check_audit_log` of docs/audit-log.md section 6.1, the check without vteller."""
    (code,) = [block for block in _doc_blocks("python") if "def check_audit_log" in block]
    namespace: dict[str, Any] = {"__name__": "audit_log_doc"}
    exec(compile(code, str(DOC), "exec"), namespace)
    check: Callable[..., list[str]] = namespace["check_audit_log"]
    return check


def documented_export_commands(database: str) -> list[str]:
    """The export commands of docs/audit-log.md section 6.1 for "sqlite" (`sqlite3`) or
    "postgresql" (`psql`): run from the directory of `vteller.db`, or with `DATABASE_URL` set."""
    client = {"sqlite": "sqlite3 ", "postgresql": "psql "}[database]
    (code,) = [block for block in _doc_blocks("bash") if "> entries.json" in block]
    return [line for line in code.splitlines() if line.startswith(client)]


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
