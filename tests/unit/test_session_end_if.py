"""Ending a session only if it is still in a given state (a disabled teller's appointments)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from server.db.models import CallSession
from server.sessions.store import SessionStore
from tests.support.database import add_session, migrated_database


async def test_a_session_that_started_meanwhile_is_not_ended(tmp_path: Path) -> None:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        await add_session(factory, "s_waiting")
        await add_session(factory, "s_started")
        async with factory() as db, db.begin():
            await db.execute(
                update(CallSession).where(CallSession.id == "s_started").values(state="active")
            )
        store = SessionStore(factory)
        started = await store.end("s_started", None, "teller_disabled", only_if="waiting")
        waiting = await store.end("s_waiting", None, "teller_disabled", only_if="waiting")
        assert (started.state, started.end_reason) == ("active", None)
        assert (waiting.state, waiting.end_reason) == ("ended", "teller_disabled")
        assert (await store.get("s_started")).state == "active"  # type: ignore[union-attr]
