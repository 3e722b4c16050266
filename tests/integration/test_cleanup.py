"""Nothing accumulates over many joins and leaves: tasks, peer connections, rooms, transceivers.

These tests make their own server with a short rejoin grace, so a participant who vanishes
without `leave` times out quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server.auth.principal import Role
from tests.support import server as support
from tests.support.bot import Bot
from tests.support.server import ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

GRACE = 0.5
JOIN_LEAVE_CYCLES = 8
VANISH_CYCLES = 3
# Tasks that may legitimately come and go at any moment (timers inside aiortc/aioice, the
# aiohttp keep-alive handling of the last HTTP request...).
TASK_SLACK = 5


@pytest.fixture
async def quick_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with support.running_server(
        support.test_settings(tmp_path, rejoin_grace_seconds=GRACE)
    ) as running:
        yield running


async def _session(server: RunningServer) -> tuple[ApiClient, ApiClient, str]:
    await server.user("teller1", Role.TELLER, "王柜员")
    teller = server.client()
    await teller.login("teller1")
    created = await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    return teller, customer, created["session"]["id"]


async def _settles(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether `predicate` becomes true within `timeout` (closing peers takes a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _task_count() -> int:
    return len(asyncio.all_tasks())


async def _customer_cycle(customer_http: ApiClient, teller: Bot, session_id: str) -> str:
    customer = Bot(customer_http, session_id, colour="red")
    try:
        joined = await customer.join()
        assert joined["rejoined"] is False
        arrived = await teller.expect("participant_joined")
        assert arrived["participant"]["id"] == customer.participant_id
        got = await customer.wait_for_media(teller.participant_id, "camera", frames=3)
        assert got.frames >= 3
        await customer.send({"type": "leave"})
        closed = await customer.expect("closed")
        assert closed["code"] == 1000
    finally:
        await customer.close()
    left = await teller.expect("participant_left")
    assert left == left | {"participant_id": customer.participant_id, "reason": "left"}
    return customer.participant_id


async def test_repeated_join_and_leave_leaves_nothing_behind(quick_server: RunningServer) -> None:
    server = quick_server
    rooms = server.services.rooms
    teller_http, customer_http, session_id = await _session(server)
    teller = Bot(teller_http, session_id, colour="blue")
    try:
        await teller.join()
        # Warm-up: the first cycle creates whatever is created once per process or per room.
        customer_id = await _customer_cycle(customer_http, teller, session_id)
        assert await _settles(lambda: rooms.peer_count() == 1)
        await asyncio.sleep(0.5)
        baseline = _task_count()
        room = rooms.get(session_id)
        assert room is not None and set(room.members) == {teller.participant_id}
        teller_peer = room.members[teller.participant_id].peer
        assert teller_peer is not None
        transceivers = len(teller_peer.pc.getTransceivers())

        for _ in range(JOIN_LEAVE_CYCLES - 1):
            assert await _customer_cycle(customer_http, teller, session_id) == customer_id

        assert await _settles(lambda: _task_count() <= baseline + TASK_SLACK), (
            f"tasks grew from {baseline} to {_task_count()} over {JOIN_LEAVE_CYCLES} cycles"
        )
        assert rooms.peer_count() == 1
        assert len(rooms) == 1 and rooms.get(session_id) is room
        assert set(room.members) == {teller.participant_id}
        # The teller's connection reuses the customer's slots rather than growing its SDP.
        assert teller_peer is room.members[teller.participant_id].peer
        assert len(teller_peer.pc.getTransceivers()) == transceivers

        # The teller still receives a customer afterwards.
        last = Bot(customer_http, session_id, colour="red")
        try:
            await last.join()
            await teller.expect("participant_joined")
            await last.wait_for_media(teller.participant_id, "camera", frames=3)
            await last.send({"type": "chat", "text": "第九次"})
            assert (await teller.expect("chat"))["message"]["text"] == "第九次"
        finally:
            await last.close(leave=True)
        await teller.expect("participant_left")
    finally:
        await teller.close(leave=True)

    assert await _settles(lambda: len(rooms) == 0 and rooms.peer_count() == 0)
    events = await server.services.sessions.events(session_id)
    joins = [
        e for e in events if e.type == "participant_joined" and e.participant_id == customer_id
    ]
    leaves = [e for e in events if e.type == "participant_left" and e.participant_id == customer_id]
    assert len(joins) == len(leaves) == JOIN_LEAVE_CYCLES + 1
    assert all(e.detail == {"reason": "left"} for e in leaves)


async def test_vanishing_participants_time_out_and_leave_nothing_behind(
    quick_server: RunningServer,
) -> None:
    server = quick_server
    rooms = server.services.rooms
    teller_http, customer_http, session_id = await _session(server)
    teller = Bot(teller_http, session_id, colour="blue")
    baseline: int | None = None
    customer_id = ""
    try:
        await teller.join()
        for cycle in range(VANISH_CYCLES + 1):
            customer = Bot(customer_http, session_id, colour="red")
            try:
                joined = await customer.join()
                # After a timeout the participant comes back as new, not as a rejoin.
                assert joined["rejoined"] is False
                customer_id = customer.participant_id
                await customer.wait_for_media(teller.participant_id, "camera", frames=3)
            finally:
                await customer.close()  # gone without `leave`, like a killed browser
            dropped = await teller.expect("participant_left")
            assert dropped == dropped | {"participant_id": customer_id, "reason": "disconnected"}
            me = await customer_http.call("GET", "/api/v1/customer/me")
            assert me["participant"]["state"] in ("disconnected", "left")
            timed_out = await teller.expect("participant_left", timeout=GRACE + 10)
            assert timed_out == timed_out | {"participant_id": customer_id, "reason": "timeout"}
            me = await customer_http.call("GET", "/api/v1/customer/me")
            assert me["participant"]["state"] == "left"
            assert me["participant"]["left_at"] is not None
            assert await _settles(lambda: rooms.peer_count() == 1)
            if cycle == 0:
                await asyncio.sleep(0.5)
                baseline = _task_count()

        assert baseline is not None
        assert await _settles(lambda: _task_count() <= baseline + TASK_SLACK), (
            f"tasks grew from {baseline} to {_task_count()} over {VANISH_CYCLES} cycles"
        )
        room = rooms.get(session_id)
        assert room is not None and set(room.members) == {teller.participant_id}
        assert len(rooms) == 1
    finally:
        await teller.close(leave=True)
    assert await _settles(lambda: len(rooms) == 0 and rooms.peer_count() == 0)

    events = await server.services.sessions.events(session_id)
    mine = [e for e in events if e.participant_id == customer_id]
    types = [e.type for e in mine]
    assert types.count("participant_disconnected") == VANISH_CYCLES + 1
    timeouts = [e for e in mine if e.type == "participant_left"]
    assert [e.detail for e in timeouts] == [{"reason": "timeout"}] * (VANISH_CYCLES + 1)
    # Each drop is followed by its timeout, never by a rejoin.
    assert "participant_rejoined" not in types


async def test_a_lone_participant_timing_out_closes_the_room(quick_server: RunningServer) -> None:
    server = quick_server
    rooms = server.services.rooms
    _, customer_http, session_id = await _session(server)
    customer = Bot(customer_http, session_id)
    try:
        await customer.join()
        assert len(rooms) == 1 and rooms.peer_count() == 1
    finally:
        await customer.close()
    assert await _settles(lambda: rooms.peer_count() == 0)
    assert await _settles(lambda: len(rooms) == 0, timeout=GRACE + 10)

    me: dict[str, Any] = await customer_http.call("GET", "/api/v1/customer/me")
    assert me["participant"]["state"] == "left"
    # The session itself is not over: the customer may come back with the same link.
    assert me["session"]["state"] != "ended"
    events = [
        (e.type, e.detail)
        for e in await server.services.sessions.events(session_id)
        if e.participant_id == me["participant"]["id"]
    ]
    assert events[-2:] == [
        ("participant_disconnected", {}),
        ("participant_left", {"reason": "timeout"}),
    ]
    again = Bot(customer_http, session_id)
    try:
        assert (await again.join())["rejoined"] is False
    finally:
        await again.close(leave=True)
    assert await _settles(lambda: len(rooms) == 0 and rooms.peer_count() == 0)
