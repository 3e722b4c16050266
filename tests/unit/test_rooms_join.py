"""Joins that fail part-way or race the room's end (server/sfu/rooms.py, the join in
server/signaling/handler.py).

A first join that fails is undone completely, so that the client's retry is a first join
again; a rejoin that fails leaves the member dropped within its grace, so that the retry is a
rejoin again; either way the audit log says that the join it recorded failed. A room that
empties is retired, so that a join queued behind the last departure (or one refused before it
took effect) never lands in, or leaves behind, a room the registry forgot.
The fakes (tests/support/rooms.py) let joins run to the end.
"""

from __future__ import annotations

import asyncio

import pytest

from server.auth.principal import Role
from server.sfu.rooms import CLOSE_REPLACED, Member
from tests.support.rooms import Call, Connection, teller_in_call


async def test_a_first_join_that_fails_part_way_is_undone_and_can_be_sent_again() -> None:
    call = Call()
    try:
        teller = await teller_in_call(call)
        offers = teller.types().count("offer")
        call.store.fail = {"participant_joined"}
        customer, connection = call.connect("p_c", Role.CUSTOMER)
        await customer.handle('{"v":1,"type":"join"}')
        assert connection.errors() == ["internal"] and "joined" not in connection.types()
        room = call.rooms.get("s_1")
        assert room is not None and set(room.members) == {"p_t"}
        assert call.store.states[-1] == ("p_c", "disconnected")
        # The teller was offered nothing about a customer who never arrived, and its
        # transceivers for the customer are free again.
        teller_peer = room.members["p_t"].peer
        assert teller_peer is not None and teller_peer.forwarded("p_c", "camera") is None
        assert teller.types().count("offer") == offers
        assert "participant_joined" not in teller.types()

        # The retry on the same connection is a first join: joined, an offer, and the teller
        # renegotiated to receive the customer.
        await customer.handle('{"v":1,"type":"join"}')
        assert connection.errors() == ["internal"]
        joined = [m for m in connection.sent if m["type"] == "joined"]
        assert [m["rejoined"] for m in joined] == [False] and "offer" in connection.types()
        assert teller.types().count("offer") == offers + 1
        assert teller_peer.forwarded("p_c", "camera") is not None
    finally:
        await call.close()


async def test_a_rejoin_that_fails_part_way_leaves_the_member_dropped_and_can_retry() -> None:
    call = Call()
    try:
        teller = await teller_in_call(call)
        dropped, _ = call.connect("p_c", Role.CUSTOMER)
        assert await dropped.handle('{"v":1,"type":"join"}')
        await dropped.finish()  # the customer's WebSocket drops
        room = call.rooms.get("s_1")
        assert room is not None
        member = room.members["p_c"]
        grace = member.grace
        assert grace is not None
        told = teller.types()
        call.store.fail = {"participant_rejoined"}
        customer, connection = call.connect("p_c", Role.CUSTOMER)
        await customer.handle('{"v":1,"type":"join"}')
        assert connection.errors() == ["internal"] and "joined" not in connection.types()
        assert "send join again" in connection.sent[-1]["message"]
        # As before the attempt: dropped, with the grace the drop started, and no half-built
        # peer; the teller was told nothing more.
        assert room.members["p_c"] is member and not room.holds("p_c", connection)
        assert member.peer is None and member.grace is grace and not grace.cancelled()
        assert call.store.states[-1] == ("p_c", "disconnected")
        assert teller.types() == told

        # The retry on the same connection is a rejoin, and ends the grace.
        await customer.handle('{"v":1,"type":"join"}')
        assert connection.errors() == ["internal"]
        joined = [m for m in connection.sent if m["type"] == "joined"]
        assert [m["rejoined"] for m in joined] == [True] and room.holds("p_c", connection)
        assert member.grace is None and grace.cancelled()
    finally:
        await call.close()


async def test_a_second_tab_whose_join_fails_leaves_the_member_dropped() -> None:
    # The first tab's connection is already replaced (4409): to the others that is a drop.
    call = Call()
    try:
        teller = await teller_in_call(call)
        first_tab, first = call.connect("p_c", Role.CUSTOMER)
        assert await first_tab.handle('{"v":1,"type":"join"}')
        call.store.fail = {"participant_rejoined"}
        second_tab, second = call.connect("p_c", Role.CUSTOMER)
        await second_tab.handle('{"v":1,"type":"join"}')
        assert first.closed_with == CLOSE_REPLACED and second.errors() == ["internal"]
        member = customer_dropped(call, teller)
        await second_tab.handle('{"v":1,"type":"join"}')
        room = call.rooms.get("s_1")
        assert room is not None and room.holds("p_c", second) and member.grace is None
    finally:
        await call.close()


async def test_a_second_tab_cancelled_while_closing_the_first_leaves_the_member_dropped() -> None:
    # A shutdown cancels the join while it closes the replaced connection: the member must not
    # be left with no connection, the first tab's peer open and no grace timer to end it.
    call = Call()
    try:
        teller = await teller_in_call(call)
        first_tab, first = call.connect("p_c", Role.CUSTOMER)
        assert await first_tab.handle('{"v":1,"type":"join"}')
        room = call.rooms.get("s_1")
        assert room is not None
        member = room.members["p_c"]
        first_peer = member.peer
        assert first_peer is not None
        first.close_error = asyncio.CancelledError()
        second_tab, _ = call.connect("p_c", Role.CUSTOMER)
        with pytest.raises(asyncio.CancelledError):
            await second_tab.handle('{"v":1,"type":"join"}')
        assert customer_dropped(call, teller) is member
        assert first_peer.pc.connectionState == "closed"
        assert call.audit.entries[-1] == (
            "session.join_failed",
            "p_c",
            {"rejoined": True, "error": "CancelledError"},
        )
    finally:
        await call.close()


async def test_the_others_are_told_of_an_undone_rejoin_the_database_cannot_record() -> None:
    call = Call()
    try:
        teller = await teller_in_call(call)
        first_tab, _ = call.connect("p_c", Role.CUSTOMER)
        assert await first_tab.handle('{"v":1,"type":"join"}')
        call.store.fail = {"participant_rejoined", "update_participant:disconnected"}
        second_tab, second = call.connect("p_c", Role.CUSTOMER)
        await second_tab.handle('{"v":1,"type":"join"}')
        assert second.errors() == ["internal"] and call.store.fail == set()
        customer_dropped(call, teller)
    finally:
        await call.close()


async def test_the_audit_log_says_when_a_join_it_recorded_was_undone() -> None:
    call = Call()
    try:
        await teller_in_call(call)
        call.store.fail = {"participant_joined"}
        customer, _ = call.connect("p_c", Role.CUSTOMER)
        await customer.handle('{"v":1,"type":"join"}')
        await customer.finish()
        call.store.fail = {"participant_rejoined"}
        second_tab, _ = call.connect("p_t", Role.TELLER)
        await second_tab.handle('{"v":1,"type":"join"}')
        customer_entries = [(a, d) for a, actor, d in call.audit.entries if actor == "p_c"]
        assert customer_entries == [
            ("session.joined", {"rejoined": False}),
            ("session.join_failed", {"rejoined": False, "error": "ConnectionError"}),
        ]
        teller_entries = [(a, d) for a, actor, d in call.audit.entries if actor == "p_t"][-2:]
        assert teller_entries == [
            ("session.joined", {"rejoined": True}),
            ("session.join_failed", {"rejoined": True, "error": "ConnectionError"}),
        ]
    finally:
        await call.close()


async def test_a_refused_first_join_leaves_no_room_behind() -> None:
    call = Call()
    call.audit.down = True
    customer, connection = call.connect("p_c", Role.CUSTOMER)
    await customer.handle('{"v":1,"type":"join"}')
    assert connection.errors() == ["audit_unavailable"]
    await customer.finish()  # the page gives up
    assert len(call.rooms) == 0


async def test_a_join_queued_behind_the_last_departure_goes_to_a_fresh_room() -> None:
    call = Call()
    try:
        customer, _ = call.connect("p_c", Role.CUSTOMER)
        assert await customer.handle('{"v":1,"type":"join"}')
        first = call.rooms.get("s_1")
        assert first is not None
        call.store.slow = 0.01  # the departure's writes let the teller's join queue up
        teller, connection = call.connect("p_t", Role.TELLER)

        async def join_meanwhile() -> None:
            await asyncio.sleep(0.005)
            await teller.handle('{"v":1,"type":"join"}')

        await asyncio.gather(customer.handle('{"v":1,"type":"leave"}'), join_meanwhile())
        room = call.rooms.get("s_1")
        assert room is not None and room is not first and first.retired
        assert set(room.members) == {"p_t"} and room.holds("p_t", connection)
        # The teller's later messages reach the live room, not `session_ended`.
        assert await teller.handle('{"v":1,"type":"screen_share","active":true}')
        assert connection.errors() == [] and connection.closed_with is None
    finally:
        await call.close()


async def test_two_first_joins_at_once_leave_one_member() -> None:
    call = Call()
    try:
        one, first = call.connect("p_c", Role.CUSTOMER)
        two, second = call.connect("p_c", Role.CUSTOMER)
        await asyncio.gather(
            one.handle('{"v":1,"type":"join"}'), two.handle('{"v":1,"type":"join"}')
        )
        room = call.rooms.get("s_1")
        assert room is not None and list(room.members) == ["p_c"]
        assert room.holds("p_c", second) and first.closed_with == CLOSE_REPLACED
    finally:
        await call.close()


async def test_a_rejoin_of_a_member_after_a_retired_room_is_a_fresh_join() -> None:
    # A member object left in a retired room is never reused: the registry hands out a new room.
    call = Call()
    try:
        retired = call.rooms.room("s_1")
        retired.members["p_c"] = Member("p_c", Role.CUSTOMER, "c")
        retired.retired = True
        customer, connection = call.connect("p_c", Role.CUSTOMER)
        await customer.handle('{"v":1,"type":"join"}')
        joined = [m for m in connection.sent if m["type"] == "joined"]
        assert [m["rejoined"] for m in joined] == [False]
        assert call.rooms.get("s_1") is not retired
    finally:
        await call.close()


def customer_dropped(call: Call, teller: Connection) -> Member:
    """The customer is still a member of the room, dropped (no connection, no peer, the grace
    running), and the teller was told once that they left."""
    room = call.rooms.get("s_1")
    assert room is not None
    member = room.members["p_c"]
    assert member.connection is None and member.peer is None and member.grace is not None
    left = [m for m in teller.sent if m["type"] == "participant_left"]
    assert [(m["participant_id"], m["reason"]) for m in left] == [("p_c", "disconnected")]
    return member
