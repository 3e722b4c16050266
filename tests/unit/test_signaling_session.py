"""One connection's protocol state machine (server/signaling/handler.py, protocol.py): what an
uploaded photo, a late frame or an oversized answer gets, and that none of it costs the call."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from PIL import Image

from server.auth.principal import Role
from server.errors import ApiError
from server.identity.verification import Step
from server.sfu.rooms import CLOSE_REPLACED
from server.signaling import handler
from server.signaling.protocol import MAX_SDP_BYTES, ProtocolError, parse_client_message
from tests.support.rooms import Call


def _frame(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


def _photo(**save: Any) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (640, 480), (120, 30, 200)).save(data, "WEBP", **save)
    return data.getvalue()


@pytest.fixture
async def call() -> Any:
    call = Call()
    call.identity.state = "in_progress"
    yield call
    await call.close()


async def _customer(call: Call) -> tuple[handler._Session, Any]:
    session, connection = call.connect("p_c", Role.CUSTOMER)
    assert await session.handle(_frame(type="join"))
    connection.sent.clear()
    return session, connection


async def _upload(session: handler._Session, photo: bytes, side: str = "front") -> bool:
    assert await session.handle(_frame(type="identity_upload", side=side, bytes=len(photo)))
    return await session.handle_binary(photo)


async def test_a_photo_the_image_library_chokes_on_is_a_bad_image(call: Call) -> None:
    session, connection = await _customer(call)
    # A WebP whose EXIF block is no TIFF: PIL raises SyntaxError, which used to end the socket.
    corrupt = _photo(exif=b"\xbfM\x00*\x00\x00\x00\x08" + bytes(16))
    assert await _upload(session, corrupt)
    assert connection.errors() == ["bad_image"]
    assert connection.sent[-1]["message"].startswith("not_an_image")
    assert await _upload(session, _photo())  # the connection and the verification go on
    assert [side for side, _ in call.identity.uploads] == ["front"]


async def test_an_upload_the_verification_refuses_is_an_error_not_a_drop(call: Call) -> None:
    session, connection = await _customer(call)
    call.identity.refuse = ApiError(503, "identity_unavailable", "Try again shortly.")
    assert await _upload(session, _photo())
    assert connection.errors() == ["identity_unavailable"]


@pytest.mark.parametrize(("state", "passed"), [("idle", None), ("in_progress", "front")])
async def test_a_photo_that_could_not_be_used_is_refused_before_it_is_decoded(
    call: Call, monkeypatch: pytest.MonkeyPatch, state: str, passed: str | None
) -> None:
    decoded: list[bytes] = []
    monkeypatch.setattr(handler, "decode_image", lambda data, limits: decoded.append(data))
    session, connection = await _customer(call)
    call.identity.state = state
    if passed is not None:
        call.identity.steps[Step(f"card_{passed}")].status = "passed"
    assert await _upload(session, _photo())
    # Refused when announced; its bytes are then an unannounced binary frame.
    assert connection.errors() == ["out_of_order", "bad_json"]
    assert decoded == [] and call.identity.uploads == []


async def test_only_the_customer_announces_a_photo(call: Call) -> None:
    session, connection = call.connect("p_t", Role.TELLER)
    assert await session.handle(_frame(type="join"))
    assert await session.handle(_frame(type="identity_upload", side="front", bytes=10))
    assert connection.errors() == ["forbidden"]


async def test_any_text_frame_between_announcement_and_photo_withdraws_it(call: Call) -> None:
    session, connection = await _customer(call)
    photo = _photo()
    assert await session.handle(_frame(type="identity_upload", side="front", bytes=len(photo)))
    assert await session.handle(_frame(type="ping"))
    assert await session.handle_binary(photo)
    assert connection.errors() == ["bad_json"] and call.identity.uploads == []


async def test_a_photo_for_a_session_that_ended_meanwhile_closes_with_4410(call: Call) -> None:
    session, connection = await _customer(call)
    photo = _photo()
    assert await session.handle(_frame(type="identity_upload", side="front", bytes=len(photo)))
    room = call.rooms.get("s_1")
    assert room is not None
    await room.shutdown()
    call.rooms._forget(room)
    assert not await session.handle_binary(photo)
    assert connection.errors() == ["session_ended"] and connection.closed_with == 4410


@pytest.mark.parametrize("frame", [_frame(type="chat", text="hi"), _frame(type="ping")])
async def test_a_connection_that_never_joined_is_told_the_session_ended(
    call: Call, frame: str
) -> None:
    session, connection = call.connect("p_c", Role.CUSTOMER)
    call.store.session.state = "ended"
    assert not await session.handle(frame)
    assert connection.types() == ["error"] and connection.errors() == ["session_ended"]
    assert connection.closed_with == 4410


async def test_before_join_an_open_session_still_answers_out_of_order_and_pong(
    call: Call,
) -> None:
    session, connection = call.connect("p_c", Role.CUSTOMER)
    assert await session.handle(_frame(type="chat", text="hi"))
    assert await session.handle(_frame(type="ping"))
    assert connection.types() == ["error", "pong"] and connection.errors() == ["out_of_order"]


def test_the_answer_limit_is_in_bytes() -> None:
    fits = "é" * (MAX_SDP_BYTES // 2)
    assert parse_client_message(_frame(type="answer", sdp=fits)).type == "answer"
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(_frame(type="answer", sdp=fits + "é"))
    assert refused.value.code == "invalid_message" and "bytes" in refused.value.message


async def test_a_leave_from_a_replaced_tab_does_not_remove_the_member_who_is_back(
    call: Call,
) -> None:
    old, old_connection = await _customer(call)
    new, new_connection = call.connect("p_c", Role.CUSTOMER)
    call.store.slow = 0.02  # the second tab's join awaits the database
    joining = asyncio.create_task(new.handle(_frame(type="join")))
    await asyncio.sleep(0)  # it holds the room now
    # The first tab's goodbye, sent before it learnt that it was replaced, waits for the room.
    leaving = asyncio.create_task(old.handle(_frame(type="leave")))
    assert await joining
    await leaving
    room = call.rooms.get("s_1")
    assert room is not None and room.holds("p_c", new_connection)
    assert old_connection.closed_with == CLOSE_REPLACED
    assert new_connection.closed_with is None
    assert call.store.states[-1] == ("p_c", "connected")


async def test_an_answer_from_a_replaced_tab_does_not_answer_the_new_tabs_offer(
    call: Call,
) -> None:
    old, old_connection = call.connect("p_c", Role.CUSTOMER)
    assert await old.handle(_frame(type="join"))
    offer = next(m for m in old_connection.sent if m["type"] == "offer")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    call.clients.append(client)
    await client.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
    await client.setLocalDescription(await client.createAnswer())
    new, new_connection = call.connect("p_c", Role.CUSTOMER)
    assert await new.handle(_frame(type="join"))
    # The old tab's answer to its own offer was on its way when the new tab joined.
    assert await old.handle(_frame(type="answer", sdp=client.localDescription.sdp))
    assert old_connection.errors() == ["out_of_order"]
    room = call.rooms.get("s_1")
    assert room is not None
    peer = room.members["p_c"].peer
    assert peer is not None and peer.pc.signalingState == "have-local-offer"
    assert new_connection.errors() == []
