"""Membership and consent changes that overlap or fail half-way (server/sfu/rooms.py,
server/recording/room.py).

Every step of a join, a disconnection or a consent awaits something (the audit log, the
database, closing a peer), so two of them can interleave: two tabs joining at once, a rejoin
while the dropped connection is being torn down, the call ending while the archive of a just
consented recording is being registered. The joins run to the end on the fakes of
tests/support/rooms.py, with their database writes made slow enough to interleave; the fakes
below make the other awaits real.
"""

from __future__ import annotations

import asyncio
import datetime
import types
from typing import Any

import pytest

from server.auth.principal import Role
from server.recording.room import RoomRecording
from server.settings import Settings
from server.sfu.forwarding import ForwardedTrack
from server.sfu.ice_policy import IcePolicy
from server.sfu.rooms import CLOSE_REPLACED, Member, Room
from server.sfu.turn import BrowserIce, TurnConfig
from server.signaling.protocol import ProtocolError
from tests.support.rooms import Call, Connection


class _Audit:
    async def append(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)  # an audit entry is a database write

    async def append_fact(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Store:
    def __init__(self, state: str = "active", down: bool = False) -> None:
        self.state = state
        self.down = down

    async def require(self, session_id: str) -> Any:
        return types.SimpleNamespace(state=self.state)

    async def update_participant(self, participant_id: str, state: str, **kwargs: Any) -> None:
        if self.down:
            raise ConnectionError("database unavailable")

    async def record(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Connection:
    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send(self, message: dict[str, Any]) -> None:
        return None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code


class _SlowPeer:
    """A peer whose close awaits its transports, as RTCPeerConnection.close() does."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(0.05)
        self.closed = True


def _room(store: _Store, settings: Settings | None = None) -> tuple[Room, list[Room]]:
    emptied: list[Room] = []
    identity: Any = types.SimpleNamespace(engines=types.SimpleNamespace(config=None))
    room = Room(
        "s_1",
        store,  # type: ignore[arg-type]
        settings or Settings.model_validate({}),
        IcePolicy([]),
        BrowserIce([], TurnConfig(), None),
        emptied.append,
        lambda publication: None,
        None,  # type: ignore[arg-type]
        _Audit(),  # type: ignore[arg-type]
        identity,
    )
    return room, emptied


async def test_two_joins_at_once_leave_one_connection_and_one_peer() -> None:
    call = Call()
    call.store.slow = 0.01
    try:
        room = call.rooms.room("s_1")
        # Two tabs of a member already in the call.
        room.members["p_c"] = Member("p_c", Role.CUSTOMER, "李女士")
        first, second = Connection(), Connection()
        await asyncio.gather(
            room.join("p_c", Role.CUSTOMER, "李女士", first),
            room.join("p_c", Role.CUSTOMER, "李女士", second),
        )
        member = room.members["p_c"]
        # The later join replaced the earlier one the usual way: its socket told, its peer closed.
        assert member.connection is second
        assert first.closed_with == CLOSE_REPLACED
        assert room.holds("p_c", second) and not room.holds("p_c", first)
        assert member.peer is not None
    finally:
        await call.close()


async def test_a_rejoin_during_the_teardown_of_the_drop_keeps_the_member() -> None:
    call = Call()
    call.settings.rejoin_grace_seconds = 0.2
    try:
        room = call.rooms.room("s_1")
        dropped, back = Connection(), Connection()
        slow = _SlowPeer()
        member = Member("p_c", Role.CUSTOMER, "李女士", connection=dropped, peer=slow)  # type: ignore[arg-type]
        room.members["p_c"] = member

        async def rejoin() -> None:
            await asyncio.sleep(0.01)  # while the dropped peer is still closing
            await room.join("p_c", Role.CUSTOMER, "李女士", back)

        await asyncio.gather(room.disconnected("p_c", dropped), rejoin())
        assert slow.closed
        assert member.connection is back
        assert member.grace is None  # the rejoin cancelled the grace the drop had armed
        await asyncio.sleep(0.3)  # longer than the grace
        assert room.members.get("p_c") is member
        assert member.peer is not None
    finally:
        await call.close()


async def test_a_grace_that_fires_as_the_member_returns_does_not_remove_it() -> None:
    room, _ = _room(_Store(), Settings.model_validate({"rejoin_grace_seconds": 0.05}))
    dropped, back = _Connection(), _Connection()
    member = Member("p_1", Role.CUSTOMER, "李女士", connection=dropped)
    room.members["p_1"] = member
    await room.disconnected("p_1", dropped)
    async with room._membership:  # the rejoin holds the room when the grace runs out
        await asyncio.sleep(0.1)
        member.connection = back
        assert member.grace is not None
        member.grace.cancel()
        member.grace = None
    await asyncio.sleep(0.05)  # the expiry spawned meanwhile has its turn
    assert room.members.get("p_1") is member


async def test_a_join_after_the_end_is_refused_and_brings_no_room_back() -> None:
    room, emptied = _room(_Store(state="ended"))
    with pytest.raises(ProtocolError) as refused:
        await room.join("p_1", Role.CUSTOMER, "李女士", _Connection())
    assert refused.value.code == "session_ended" and refused.value.fatal
    assert room.members == {}
    assert emptied == [room]  # the registry forgets it again


async def test_the_last_one_out_seals_the_recording_even_if_the_database_fails() -> None:
    room, emptied = _room(_Store(down=True))
    connection = _Connection()
    room.members["p_1"] = Member("p_1", Role.CUSTOMER, "李女士", connection=connection)
    recording = _Recording()
    room.recording = recording  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await room.leave("p_1", "left", connection)
    assert room.members == {}
    assert recording.stopped == "complete"
    assert emptied == [room]


class _Recording:
    archive_id = "a_1"
    started_at = datetime.datetime.now(datetime.UTC)

    def __init__(self) -> None:
        self.stopped: str | None = None

    def mark(self, moment: str, phase: str) -> int:
        return 0

    def presence(self, *args: Any) -> None:
        return None

    async def stop(self, status: str = "complete", *, patience: float = 30.0) -> None:
        self.stopped = status


class _Manager:
    def __init__(self) -> None:
        self.started: list[_Recording] = []

    async def new_recording(self, *args: Any) -> _Recording:
        await asyncio.sleep(0.02)  # the archive is registered in the database
        recording = _Recording()
        self.started.append(recording)
        return recording

    def store_status(self) -> Any:
        return types.SimpleNamespace(pending_count=0, last_error=None, consecutive_failures=0)

    async def storage_problem(self) -> str | None:
        return None


async def test_consent_that_arrives_as_the_request_is_withdrawn_records_nothing() -> None:
    manager = _Manager()

    async def broadcast(message: dict[str, Any], audience: str) -> None:
        return None

    recording = RoomRecording(manager, "s_1", "wealth", broadcast)  # type: ignore[arg-type]
    await recording.request_consent(True)

    async def withdraw() -> None:
        await asyncio.sleep(0.005)
        await recording.stop("complete")  # the call ends, or the teller stops

    consent, _ = await asyncio.gather(recording.consent(True), withdraw(), return_exceptions=True)
    assert isinstance(consent, ProtocolError) and consent.code == "out_of_order"
    assert recording.state == "idle" and not recording.active
    # The archive already registered is sealed at once, not left recording unattended.
    assert [r.stopped for r in manager.started] == ["interrupted"]


def test_a_consumer_track_its_sender_ended_takes_no_more_sources() -> None:
    # A departure detaches the leaver's media from everyone else's tracks; a consumer whose
    # own peer connection closed first has ended tracks, and that must not abort the departure.
    track = ForwardedTrack("video", "p_2", "camera")
    track.stop()
    track.attach(None)
    assert track.readyState == "ended"
