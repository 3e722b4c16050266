"""Placing sessions on live workers, and moving the sessions of dead ones (server/workers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession
from server.db.models import CallSession, SessionEvent, Worker, utcnow
from server.workers.registry import WorkerRegistry
from tests.support import server as support
from tests.support.database import TELLER_ID, migrated_database
from tests.support.workers import registered_worker


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        yield factory


@asynccontextmanager
async def _worker(
    db: async_sessionmaker[DbSession], tmp_path: Path, port: int
) -> AsyncIterator[WorkerRegistry]:
    settings = support.test_settings(tmp_path, port=port, worker_heartbeat_seconds=60)
    async with registered_worker(db, settings) as registry:
        yield registry


async def _add_session(
    db: async_sessionmaker[DbSession], session_id: str, worker_id: str, state: str
) -> None:
    async with db() as session, session.begin():
        session.add(
            CallSession(
                id=session_id,
                business="wealth",
                teller_id=TELLER_ID,
                worker_id=worker_id,
                state=state,
            )
        )


async def _add_worker(
    db: async_sessionmaker[DbSession], url: str, *, heartbeat_age: timedelta
) -> str:
    """A worker row whose process is gone (killed: no shutdown ran, no code of it runs)."""
    async with db() as session, session.begin():
        worker = Worker(url=url, hostname="h", pid=1, heartbeat_at=utcnow() - heartbeat_age)
        session.add(worker)
    return worker.id


Placement = tuple[str, str, list[tuple[str, object]]]  # worker id, state, events (type, detail)


async def _placement(db: async_sessionmaker[DbSession], session_id: str) -> Placement:
    async with db() as session:
        call = await session.get(CallSession, session_id)
        assert call is not None and call.worker_id is not None
        events = await session.scalars(
            select(SessionEvent).where(SessionEvent.session_id == session_id)
        )
        return call.worker_id, call.state, [(e.type, e.detail) for e in events]


async def test_a_dead_workers_sessions_move_once_to_a_live_worker(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    dead = await _add_worker(db, "http://127.0.0.1:18002", heartbeat_age=timedelta(hours=1))
    calls = [f"call{index}" for index in range(4)]
    for session_id in calls:
        await _add_session(db, session_id, dead, "active")
    await _add_session(db, "lobby", dead, "waiting")
    async with _worker(db, tmp_path, 18001) as one, _worker(db, tmp_path, 18003) as two:
        live = {one.worker_id, two.worker_id}
        # Every live worker recovers at its heartbeat; these may also race their first beats.
        await asyncio.gather(one.recover_dead(), two.recover_dead())
        for session_id in calls:
            worker_id, state, events = await _placement(db, session_id)
            assert worker_id in live and state == "interrupted"
            assert events == [("session_interrupted", {"from": dead, "to": worker_id})]
        worker_id, state, events = await _placement(db, "lobby")
        assert worker_id in live and state == "waiting"
        assert events == [("session_moved", {"from": dead, "to": worker_id})]
        assert await one.recover_dead() == 0


async def test_a_restarted_worker_takes_over_its_predecessor_at_the_same_url(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    # Killed and restarted on its port before its last heartbeat went stale.
    predecessor = await _add_worker(db, "http://127.0.0.1:18012", heartbeat_age=timedelta())
    await _add_session(db, "call", predecessor, "active")
    elsewhere = await _add_worker(db, "http://127.0.0.1:18011", heartbeat_age=timedelta())
    await _add_session(db, "kept", elsewhere, "active")
    async with _worker(db, tmp_path, 18012) as restarted:
        await restarted.recover_dead()
        worker_id, state, events = await _placement(db, "call")
        assert (worker_id, state) == (restarted.worker_id, "interrupted")
        assert [e[0] for e in events] == ["session_interrupted"]
        assert await _placement(db, "kept") == (elsewhere, "active", [])

        # Still heartbeating as far as the database knows, and now the least loaded: it is gone
        # all the same, so nothing new goes there.
        for index in range(2):
            await _add_session(db, f"elsewhere{index}", elsewhere, "waiting")
            await _add_session(db, f"restarted{index}", restarted.worker_id, "waiting")
        assert await restarted.place() != predecessor


async def test_two_workers_claiming_a_session_at_once_one_hosts_it_the_other_points_there(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    async with db() as session, session.begin():
        session.add(CallSession(id="call", business="wealth", teller_id=TELLER_ID, worker_id=None))
    async with _worker(db, tmp_path, 18021) as one, _worker(db, tmp_path, 18022) as two:
        answers = await asyncio.gather(one.claim("call"), two.claim("call"))
        worker_id, _, events = await _placement(db, "call")
        url = {one.worker_id: "http://127.0.0.1:18021", two.worker_id: "http://127.0.0.1:18022"}
        assert sorted(answers, key=lambda answer: answer or "") == [None, url[worker_id]]
        assert events == [("session_moved", {"from": None, "to": worker_id})]


async def test_recovery_takes_any_number_of_dead_workers_and_forgets_unused_rows(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    # Every stopped or restarted worker stays dead for good. Their ids were once all parameters
    # of the recovery's query, at every beat, until there were more than a statement may have
    # (asyncpg: 32,767).
    parameters: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        parameters.append(len(params))

    silent = utcnow() - timedelta(minutes=10)
    rows = [
        {"id": f"w_dead{index}", "url": "http://x", "hostname": "h", "pid": 1}
        | {"heartbeat_at": silent, "started_at": silent}
        for index in range(500)
    ]
    async with db() as session, session.begin():
        await session.execute(insert(Worker), rows)
    stopped = await _add_worker(db, "http://127.0.0.1:18031", heartbeat_age=timedelta())
    long_gone = await _add_worker(db, "http://127.0.0.1:18032", heartbeat_age=timedelta(hours=2))
    referenced = await _add_worker(db, "http://127.0.0.1:18033", heartbeat_age=timedelta(days=1))
    async with db() as session, session.begin():
        await session.execute(
            update(Worker).where(Worker.id == stopped).values(stopped_at=utcnow())
        )
    await _add_session(db, "old", referenced, "ended")
    await _add_session(db, "call", "w_dead7", "active")
    async with _worker(db, tmp_path, 18034) as live:
        engine = db.kw["bind"].sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            await live.recover_dead()  # its first heartbeat may have done it already
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert parameters and max(parameters) < 20
        assert (await _placement(db, "call"))[:2] == (live.worker_id, "interrupted")
        async with db() as session:
            left = set(await session.scalars(select(Worker.id)))
    # Stopped or silent for an hour, and no session refers to them: gone. Workers only
    # briefly silent may come back; those a session refers to are kept for it.
    assert stopped not in left and long_gone not in left
    assert {referenced, live.worker_id, "w_dead7", "w_dead0"} <= left
