"""Admission control: a worker is never given more open sessions than its capacity
(`worker_max_sessions`), on SQLite and on PostgreSQL; with every worker full, whatever creates a
session is told so (503 capacity_full) and the queue keeps its customers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.auth.principal import Principal, Role
from server.db.engine import DbSession
from server.db.models import CallSession, utcnow
from server.errors import ApiError
from server.sessions.store import OPEN_STATES, SessionStore
from server.workers.registry import WorkerRegistry
from tests.integration.test_http_api import assert_error, invite, send, staff
from tests.integration.test_queue import join, on_duty, ticket
from tests.support import server as support
from tests.support.database import TELLER_ID, migrated_database
from tests.support.postgres import database_url
from tests.support.server import RunningServer, running_server
from tests.support.workers import registered_worker

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

TELLER = Principal(role=Role.TELLER, display_name="t", csrf_token="x", user_id=TELLER_ID)


@pytest.fixture
async def db(tmp_path: Path, database: str) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with (
        database_url(database) as url,
        migrated_database(tmp_path / "db.sqlite", url) as factory,
    ):
        yield factory


def _worker(
    db: async_sessionmaker[DbSession], tmp_path: Path, max_sessions: int
) -> AbstractAsyncContextManager[WorkerRegistry]:
    """A worker of its own URL (a free port) that carries `max_sessions`."""
    settings = support.test_settings(
        tmp_path, worker_heartbeat_seconds=60, worker_max_sessions=max_sessions
    )
    return registered_worker(db, settings)


async def _open(store: SessionStore, workers: WorkerRegistry) -> CallSession:
    return await store.open_session(
        TELLER,
        "general",
        "",
        utcnow() + timedelta(minutes=30),
        workers,
        secrets.token_hex(32),
        f"s_{secrets.token_hex(6)}",
    )


async def _hosting(db: async_sessionmaker[DbSession], worker_id: str, *states: str) -> list[str]:
    """Sessions on `worker_id`, one in each of `states`."""
    ids = [f"s_{secrets.token_hex(6)}" for _ in states]
    async with db() as session, session.begin():
        session.add_all(
            CallSession(
                id=session_id,
                business="general",
                teller_id=TELLER_ID,
                worker_id=worker_id,
                state=state,
            )
            for session_id, state in zip(ids, states, strict=True)
        )
    return ids


async def _open_sessions(db: async_sessionmaker[DbSession], worker_id: str) -> int:
    async with db() as session:
        count = await session.scalar(
            select(func.count()).where(
                CallSession.worker_id == worker_id, CallSession.state.in_(OPEN_STATES)
            )
        )
    return count or 0


async def test_placement_skips_a_full_worker(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    store = SessionStore(db)
    async with _worker(db, tmp_path / "a", 2) as small, _worker(db, tmp_path / "b", 6) as large:
        # Ended sessions hold no slot; invited (waiting) and interrupted ones do.
        await _hosting(db, small.worker_id, "waiting", "interrupted", "ended", "ended")
        await _hosting(db, large.worker_id, "active", "active", "waiting")
        # The small worker is the less loaded (2 against 3), and full.
        placed = [await _open(store, small) for _ in range(3)]
        assert {session.worker_id for session in placed} == {large.worker_id}
        assert await _open_sessions(db, small.worker_id) == 2


async def test_every_worker_full_is_refused_until_a_session_ends(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    store = SessionStore(db)
    async with _worker(db, tmp_path / "a", 1) as one, _worker(db, tmp_path / "b", 2) as two:
        await _hosting(db, one.worker_id, "active")
        first, _ = await _hosting(db, two.worker_id, "active", "waiting")
        with pytest.raises(ApiError) as full:
            await _open(store, one)
        assert (full.value.status, full.value.code) == (503, "capacity_full")
        assert full.value.headers == {"Retry-After": "30"}
        assert "VTELLER_WORKER_MAX_SESSIONS" in full.value.message
        with pytest.raises(ApiError, match="add workers or machines"):
            await two.check_room()
        async with db() as session:
            assert await session.scalar(select(func.count()).select_from(CallSession)) == 3

        await store.end(first, TELLER_ID, "ended_by_participant")
        await one.check_room()
        assert (await _open(store, one)).worker_id == two.worker_id


async def test_concurrent_placements_for_the_last_slot_give_exactly_one_session(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    store = SessionStore(db)
    async with _worker(db, tmp_path / "a", 1) as full, _worker(db, tmp_path / "b", 4) as last:
        await _hosting(db, full.worker_id, "active")
        await _hosting(db, last.worker_id, "active", "active", "interrupted")
        # Placed by both workers at once, as by several workers and machines.
        results = await asyncio.gather(
            *(_open(store, (full, last)[index % 2]) for index in range(8)),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, CallSession)]
        refused = [r for r in results if isinstance(r, ApiError) and r.code == "capacity_full"]
        assert len(won) == 1 and len(refused) == 7, results
        assert won[0].worker_id == last.worker_id
        assert await _open_sessions(db, last.worker_id) == 4


# -- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
async def full_server(tmp_path: Path, database: str) -> AsyncIterator[RunningServer]:
    """One worker that carries one session."""
    async with (
        database_url(database) as url,
        running_server(
            support.test_settings(
                tmp_path,
                database_url=url,
                worker_max_sessions=1,
                worker_heartbeat_seconds=0.2,
            )
        ) as running,
    ):
        yield running


async def test_a_full_service_answers_503_and_the_queue_keeps_its_customers(
    full_server: RunningServer,
) -> None:
    server = full_server
    supervisor = await staff(server, "sup", Role.SUPERVISOR)
    teller, _ = await on_duty(server, "t1", ["general"], supervisor)
    other, _ = await on_duty(server, "t2", ["general"], supervisor)
    created = await invite(teller)

    refused = await send(
        other,
        "POST",
        "/api/v1/invitations",
        {"business": "general", "customer_name": ""},
        csrf=other.csrf,
    )
    assert_error(refused, 503, "capacity_full")
    assert refused.headers["Retry-After"] == "30"

    customer = await join(server, "other")
    taken = await send(other, "POST", "/api/v1/queue/take", {}, csrf=other.csrf)
    assert_error(taken, 503, "capacity_full")
    assert taken.headers["Retry-After"] == "30"
    waiting = await ticket(customer)
    assert (waiting["state"], waiting["position"]) == ("waiting", 1)
    async with server.services.engine.connect() as connection:
        sessions = await connection.scalar(select(func.count()).select_from(CallSession))
    assert sessions == 1  # nothing was started for the refused ones
    assert await _metric(server, "vteller_worker_max_sessions") == 1
    assert await _metric(server, "vteller_worker_open_sessions") == 1

    # The call ends: its slot is free, and the waiting customer is taken.
    await teller.call("POST", f"/api/v1/sessions/{created['session']['id']}/end", {})
    await other.call("POST", "/api/v1/queue/take", {}, expect=201)
    assert (await ticket(customer))["state"] == "taken"


async def _metric(server: RunningServer, name: str) -> float:
    """`name`'s value on /metrics once the heartbeat has counted the last change."""
    await asyncio.sleep(3 * server.settings.worker_heartbeat_seconds)
    token = (server.settings.data_dir / "metrics.token").read_text().strip()
    http = server.client()
    response = await http.http.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    for line in (await response.text()).splitlines():
        if line.startswith(f"{name} "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} is not on /metrics")
