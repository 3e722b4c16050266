"""One connection's protocol state machine (server/signaling/handler.py, protocol.py): what an
uploaded photo, a late frame or an oversized answer gets, and that none of it costs the call."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from server.auth.principal import Role
from server.errors import ApiError
from server.identity.verification import Step
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
