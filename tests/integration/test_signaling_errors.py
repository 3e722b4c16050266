"""Signaling errors of docs/protocol.md section 2: refusals, bad frames, bad states, abuse.

Most tests drive a bare WebSocket by hand (the Bot answers offers on its own, which would hide
the states under test); after every kind of abuse the session must still work for the others.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from server.auth.principal import Role
from server.signaling.handler import HARD_FRAME_LIMIT
from tests.support import server as support
from tests.support.audit import audit_log_away
from tests.support.bot import Bot
from tests.support.server import ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

EVIL = "https://evil.example"
LOOPBACK_CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"


@dataclass
class Raw:
    """A WebSocket driven by hand: nothing is answered automatically."""

    ws: aiohttp.ClientWebSocketResponse
    last_offer: dict[str, Any] | None = None

    async def send(self, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"v": 1, **fields}))

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type == aiohttp.WSMsgType.TEXT:
            message: dict[str, Any] = json.loads(frame.data)
            if message["type"] == "offer":
                self.last_offer = message
            return message
        if frame.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            return {"type": "closed", "code": self.ws.close_code}
        raise AssertionError(f"unexpected frame {frame!r}")

    async def expect(self, message_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of this type; messages of other types are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive(timeout)
                if message["type"] == message_type:
                    return message
                if message["type"] == "closed":
                    raise AssertionError(f"closed ({message['code']}) waiting for {message_type}")

    async def error(self, code: str, ref: str | None = None) -> dict[str, Any]:
        """The next message must be this error (nothing else may come first)."""
        message = await self.receive()
        assert message["type"] == "error", message
        assert message["code"] == code, message
        assert message["ref"] == ref, message
        assert message["v"] == 1 and isinstance(message["message"], str) and message["message"]
        return message

    async def pong(self) -> None:
        """Ping and see the very next message is the pong: the connection is alive and idle."""
        await self.send(type="ping")
        assert await self.receive() == {"v": 1, "type": "pong"}

    async def closed(self) -> int | None:
        message = await self.receive()
        assert message["type"] == "closed", message
        code: int | None = message["code"]
        return code


@dataclass
class Call:
    server: RunningServer
    teller: ApiClient
    customer: ApiClient
    session_id: str
    sockets: list[aiohttp.ClientWebSocketResponse]

    async def connect(self, client: ApiClient, session_id: str | None = None, **kwargs: Any) -> Raw:
        ws = await client.http.ws_connect(client.ws_url(session_id or self.session_id), **kwargs)
        self.sockets.append(ws)
        return Raw(ws)

    async def joined(self, client: ApiClient) -> tuple[Raw, dict[str, Any]]:
        """Connect, join and wait for the first offer (left unanswered)."""
        raw = await self.connect(client)
        await raw.send(type="join")
        joined = await raw.expect("joined")
        await raw.expect("offer")
        return raw, joined


async def staff(server: RunningServer, username: str, role: Role = Role.TELLER) -> ApiClient:
    await server.user(username, role, f"{username} name")
    client = server.client()
    await client.login(username)
    return client


async def new_session(server: RunningServer, teller: ApiClient) -> tuple[str, ApiClient]:
    created = await teller.call(
        "POST", "/api/v1/invitations", {"business": "wealth", "customer_name": "李女士"}, expect=201
    )
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    return created["session"]["id"], customer


@pytest.fixture
async def call(server: RunningServer) -> AsyncIterator[Call]:
    teller = await staff(server, "teller1")
    session_id, customer = await new_session(server, teller)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    yield Call(server, teller, customer, session_id, sockets)
    for ws in sockets:
        await ws.close()


async def answer_offer(offer: dict[str, Any]) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc, pc.localDescription.sdp


async def chat_round_trip(a: Raw, b: Raw, text: str) -> None:
    """`a` says something; both `a` and `b` receive it, stored and attributed."""
    await a.send(type="chat", text=text)
    for raw in {id(b): b, id(a): a}.values():
        got = await raw.expect("chat")
        assert got["message"]["text"] == text


async def chat_with_bot(bot: Bot, raw: Raw, text: str) -> None:
    await bot.send({"type": "chat", "text": text})
    assert (await raw.expect("chat"))["message"]["text"] == text
    assert (await bot.expect("chat"))["message"]["text"] == text
    await raw.send(type="chat", text=text + "!")
    assert (await bot.expect("chat"))["message"]["text"] == text + "!"
    assert (await raw.expect("chat"))["message"]["text"] == text + "!"


# -- admission -------------------------------------------------------------------------------


async def test_no_credential_is_4401(call: Call) -> None:
    raw = await call.connect(call.server.client())
    await raw.error("not_authenticated")
    assert await raw.closed() == 4401


async def test_revoked_staff_login_is_4401(call: Call) -> None:
    await call.teller.call("POST", "/api/v1/auth/logout")
    call.teller.csrf = ""
    raw = await call.connect(call.teller)
    await raw.error("not_authenticated")
    assert await raw.closed() == 4401


async def test_an_open_staff_connection_closes_after_a_logout(tmp_path: Path) -> None:
    """A teller who logs out (or whose account is disabled) keeps no access to the call through
    a WebSocket opened before."""
    settings = support.test_settings(tmp_path, ws_login_check_seconds=0.3)
    async with support.running_server(settings) as server:
        teller = await staff(server, "teller1")
        session_id, _customer = await new_session(server, teller)
        call = Call(server, teller, _customer, session_id, [])
        try:
            raw, _ = await call.joined(teller)
            await asyncio.sleep(1)  # several checks pass while the login stands
            assert not raw.ws.closed
            await teller.call("POST", "/api/v1/auth/logout")
            message = await raw.expect("error", timeout=5)
            assert message["code"] == "not_authenticated"
            assert await raw.closed() == 4401
        finally:
            for ws in call.sockets:
                await ws.close()


async def test_unknown_session_is_4404(call: Call) -> None:
    raw = await call.connect(call.teller, "s_000000000000000000000000")
    await raw.error("unknown_session")
    assert await raw.closed() == 4404


async def test_customer_of_another_session_is_4403(call: Call) -> None:
    other_session, _ = await new_session(call.server, call.teller)
    raw = await call.connect(call.customer, other_session)
    await raw.error("forbidden")
    assert await raw.closed() == 4403
    # The refused attempt left no trace in that session.
    detail = await call.teller.call("GET", f"/api/v1/sessions/{other_session}")
    assert [p["role"] for p in detail["session"]["participants"]] == ["teller", "customer"]
    assert all(p["state"] == "invited" for p in detail["session"]["participants"])


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.ADMIN])
async def test_auditors_and_admins_are_4403(call: Call, role: Role) -> None:
    client = await staff(call.server, f"{role.value}1", role)
    raw = await call.connect(client)
    await raw.error("forbidden")
    assert await raw.closed() == 4403


async def test_uninvited_staff_are_4403(call: Call) -> None:
    expert = await staff(call.server, "expert1", Role.EXPERT)
    other_teller = await staff(call.server, "teller2")
    for client in (expert, other_teller):
        raw = await call.connect(client)
        await raw.error("forbidden")
        assert await raw.closed() == 4403


async def test_foreign_origin_is_4403(call: Call) -> None:
    raw = await call.connect(call.customer, headers={"Origin": EVIL})
    await raw.error("bad_origin")
    assert await raw.closed() == 4403
    # The customer's own page still connects.
    own = await call.connect(call.customer)
    await own.send(type="join")
    assert (await own.expect("joined"))["role"] == "customer"


# -- framing ---------------------------------------------------------------------------------


async def test_malformed_json_is_reported_and_the_connection_stays(call: Call) -> None:
    raw = await call.connect(call.customer)
    # Nested 30,000 deep (fits in a frame, overflows a recursive parser); an integer too long
    # to convert.
    nested, huge = "[" * 30_000, '{"v": 1, "type": "ping", "n": ' + "9" * 5000 + "}"
    for frame in ("{not json", "", "[1, 2]", '"join"', "null", nested, huge):
        await raw.ws.send_str(frame)
        await raw.error("bad_json")
    await raw.pong()
    await raw.send(type="join")
    assert (await raw.expect("joined"))["role"] == "customer"
    await raw.expect("offer")
    await raw.ws.send_str("{")
    await raw.error("bad_json")
    await raw.pong()


async def test_binary_frame_is_bad_json(call: Call) -> None:
    raw = await call.connect(call.customer)
    await raw.ws.send_bytes(json.dumps({"v": 1, "type": "ping"}).encode())
    await raw.error("bad_json")
    await raw.pong()


async def test_frame_over_64_kib_is_refused_and_ignored(call: Call) -> None:
    raw, _ = await call.joined(call.customer)
    text = "字" * 30_000  # 90 000 bytes in UTF-8, although only 30 000 characters
    await raw.send(type="chat", text=text)
    await raw.error("message_too_large")
    await raw.ws.send_str(json.dumps({"v": 1, "type": "chat", "text": "x" * (70 * 1024)}))
    await raw.error("message_too_large")
    # Nothing of it was stored or broadcast; the connection goes on.
    await raw.pong()
    await raw.send(type="chat", text="still here")
    assert (await raw.expect("chat"))["message"]["text"] == "still here"
    detail = await call.teller.call("GET", f"/api/v1/sessions/{call.session_id}")
    assert [m["text"] for m in detail["chat"]] == ["still here"]


async def test_frame_just_under_the_limit_is_validated_normally(call: Call) -> None:
    raw = await call.connect(call.customer)
    # A valid message (candidate objects may carry keys the server ignores) of exactly 64 KiB.
    prefix = '{"v": 1, "type": "ice", "candidate": {"candidate": "", "pad": "'
    suffix = '"}}'
    frame = prefix + "x" * (64 * 1024 - len(prefix) - len(suffix)) + suffix
    assert len(frame.encode()) == 64 * 1024
    await raw.ws.send_str(frame)
    await raw.error("out_of_order", "ice")  # parsed and valid, but not joined yet
    await raw.pong()


async def test_frame_over_the_hard_limit_closes_the_connection(call: Call) -> None:
    raw = await call.connect(call.customer)
    await raw.ws.send_str("x" * (HARD_FRAME_LIMIT + 1))
    message = await raw.receive()
    assert message == {"type": "closed", "code": aiohttp.WSCloseCode.MESSAGE_TOO_BIG}


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
async def test_wrong_version_closes_with_4400(call: Call, version: Any) -> None:
    raw = await call.connect(call.customer)
    await raw.ws.send_str(json.dumps({"v": version, "type": "ping"}))
    await raw.error("unsupported_version", "ping")
    assert await raw.closed() == 4400


async def test_missing_version_closes_with_4400_even_after_join(call: Call) -> None:
    teller, _ = await call.joined(call.teller)
    raw, joined = await call.joined(call.customer)
    await raw.ws.send_str(json.dumps({"type": "chat", "text": "hi"}))
    await raw.error("unsupported_version", "chat")
    assert await raw.closed() == 4400
    # For the others it is a drop like any other (rejoin grace applies).
    left = await teller.expect("participant_left")
    assert left["participant_id"] == joined["participant_id"]
    assert left["reason"] == "disconnected"


async def test_invalid_messages_are_named_and_ignored(call: Call) -> None:
    raw, _ = await call.joined(call.customer)
    await raw.send(type="warp")
    error = await raw.error("invalid_message", "warp")
    assert "warp" in error["message"]
    await raw.send(type="chat")
    assert (await raw.error("invalid_message", "chat"))["message"].startswith("text:")
    await raw.send(type="chat", text="x" * 2001)
    assert (await raw.error("invalid_message", "chat"))["message"].startswith("text:")
    await raw.send(type="ice", candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host")
    assert (await raw.error("invalid_message", "ice"))["message"].startswith("candidate:")
    await raw.send(type="ping", extra=True)
    assert (await raw.error("invalid_message", "ping"))["message"].startswith("extra:")
    await raw.pong()


# -- protocol state --------------------------------------------------------------------------


async def test_messages_before_join_are_out_of_order(call: Call) -> None:
    raw = await call.connect(call.customer)
    early: list[dict[str, Any]] = [
        {"type": "chat", "text": "hello?"},
        {"type": "answer", "sdp": "v=0\r\n"},
        {"type": "ice", "candidate": None},
        {"type": "screen_share", "active": True},
        {"type": "leave"},
        {"type": "end"},
    ]
    for message in early:
        await raw.send(**message)
        error = await raw.error("out_of_order", message["type"])
        assert "join" in error["message"].lower()
    # None of it had an effect: the session was not ended and nothing was said.
    detail = await call.teller.call("GET", f"/api/v1/sessions/{call.session_id}")
    assert detail["session"]["state"] == "waiting" and detail["chat"] == []
    await raw.send(type="join")
    assert (await raw.expect("joined"))["rejoined"] is False


async def test_join_twice_is_out_of_order(call: Call) -> None:
    raw, joined = await call.joined(call.customer)
    await raw.send(type="join")
    await raw.error("out_of_order", "join")
    await raw.pong()
    await chat_round_trip(raw, raw, "one join only")
    events = await call.server.services.sessions.events(call.session_id)
    assert [e.type for e in events].count("participant_joined") == 1
    assert joined["participant_id"]


async def test_answers_ice_and_invalid_sdp(call: Call) -> None:
    raw, _ = await call.joined(call.customer)
    offer = raw.last_offer
    assert offer is not None and offer["publish"]
    # ICE before any answer is out of order.
    await raw.send(type="ice", candidate={"candidate": LOOPBACK_CANDIDATE, "sdpMid": "0"})
    await raw.error("out_of_order", "ice")
    # An answer that cannot be applied is refused; the offer stays pending.
    for sdp in ("this is not sdp", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"):
        await raw.send(type="answer", sdp=sdp)
        await raw.error("invalid_sdp", "answer")
    await raw.pong()

    # The offer is still pending: answer it properly.
    pc, answer = await answer_offer(offer)
    try:
        await raw.send(type="answer", sdp=answer)
        await raw.pong()  # no error came before the pong: the answer was applied
        # A second answer has no offer to answer.
        await raw.send(type="answer", sdp=answer)
        error = await raw.error("out_of_order", "answer")
        assert "offer" in error["message"].lower()
        # Trickle ICE is accepted now; foreign addresses are dropped silently.
        await raw.send(type="ice", candidate={"candidate": LOOPBACK_CANDIDATE, "sdpMid": "0"})
        await raw.send(
            type="ice",
            candidate={"candidate": LOOPBACK_CANDIDATE.replace("127.0.0.1", "203.0.113.9")},
        )
        await raw.send(type="ice", candidate={"candidate": "", "sdpMid": "0"})
        await raw.pong()
        # Lines the address policy cannot even read are dropped silently, like foreign ones.
        await raw.send(type="ice", candidate={"candidate": "candidate:garbage", "sdpMid": "0"})
        await raw.pong()
        # Candidates that do not parse, or name no m-line, are refused.
        unparsable = LOOPBACK_CANDIDATE.replace("2130706431", "high")
        await raw.send(type="ice", candidate={"candidate": unparsable, "sdpMid": "0"})
        error = await raw.error("invalid_message", "ice")
        assert error["message"].startswith("candidate:")
        await raw.send(type="ice", candidate={"candidate": LOOPBACK_CANDIDATE})
        error = await raw.error("invalid_message", "ice")
        assert "sdpMid" in error["message"]
        await raw.send(type="ice", candidate=None)
        await raw.pong()
        await chat_round_trip(raw, raw, "negotiated")
    finally:
        await pc.close()


async def test_a_message_the_role_may_not_send_is_audited_once_a_minute(call: Call) -> None:
    """A customer's page sending what only staff may (a crafted page probing the call) is an
    incident for the audit log (access.denied), written once however often it is tried."""
    await call.joined(call.teller)
    customer, joined = await call.joined(call.customer)
    for _ in range(3):
        await customer.send(type="screen_share", active=True)
        await customer.error("forbidden", "screen_share")
    entries = [e for e in await call.server.services.audit.tail(50) if e.action == "access.denied"]
    assert [(e.actor, e.actor_role, e.target, e.detail["method"]) for e in entries] == [
        (joined["participant_id"], "customer", "/ws/v1/sessions/{session_id}", "screen_share")
    ]
    assert entries[0].detail["ids"] == {"session_id": call.session_id}


async def test_customer_may_not_share_a_screen(call: Call) -> None:
    teller, _ = await call.joined(call.teller)
    customer, _ = await call.joined(call.customer)
    await teller.expect("participant_joined")
    await customer.send(type="screen_share", active=True)
    error = await customer.error("forbidden", "screen_share")
    assert "screen" in error["message"].lower()
    # The teller may, and the customer is told.
    await teller.send(type="screen_share", active=True)
    shared = await customer.expect("screen_share")
    assert shared["active"] is True
    events = [e.type for e in await call.server.services.sessions.events(call.session_id)]
    assert events.count("screen_share_started") == 1
    await chat_round_trip(teller, customer, "after screen share")


async def test_only_teller_and_customer_end_the_session(call: Call) -> None:
    expert = await staff(call.server, "expert1", Role.EXPERT)
    supervisor = await staff(call.server, "super1", Role.SUPERVISOR)
    await call.teller.call(
        "POST", f"/api/v1/sessions/{call.session_id}/experts", {"username": "expert1"}, expect=201
    )
    teller, _ = await call.joined(call.teller)
    for client in (expert, supervisor):
        raw, _ = await call.joined(client)
        await raw.send(type="end")
        error = await raw.error("forbidden", "end")
        assert "teller" in error["message"].lower()
        await raw.pong()
    detail = await call.teller.call("GET", f"/api/v1/sessions/{call.session_id}")
    assert detail["session"]["state"] != "ended"
    await chat_round_trip(teller, raw, "still in session")


async def test_a_connection_admitted_before_the_end_cannot_join_after_it(call: Call) -> None:
    teller, _ = await call.joined(call.teller)
    late = await call.connect(call.customer)  # admitted while the session is live
    await teller.send(type="end")
    await teller.expect("session_ended")
    assert await teller.closed() == 4410
    await late.send(type="join")
    await late.error("session_ended", "join")
    assert await late.closed() == 4410
    # Nothing was brought back to life: the session stays ended, with no one connected.
    detail = await call.teller.call("GET", f"/api/v1/sessions/{call.session_id}")
    assert detail["session"]["state"] == "ended"
    assert all(p["state"] != "connected" for p in detail["session"]["participants"])


async def test_an_end_the_audit_log_refuses_keeps_the_connection(call: Call) -> None:
    teller, _ = await call.joined(call.teller)
    async with audit_log_away(call.server):
        await teller.send(type="end")
        await teller.error("audit_unavailable")
        await teller.pong()  # still connected: the teller can try again
    await teller.send(type="end")
    await teller.expect("session_ended")
    assert await teller.closed() == 4410


async def test_flood_is_rate_limited(call: Call) -> None:
    teller, _ = await call.joined(call.teller)
    raw, _ = await call.joined(call.customer)
    await teller.expect("participant_joined")
    count = 120
    started = time.monotonic()
    for _ in range(count):
        await raw.ws.send_str('{"v": 1, "type": "ping"}')
    replies = [await raw.receive() for _ in range(count)]
    elapsed = time.monotonic() - started
    pongs = sum(1 for m in replies if m["type"] == "pong")
    limited = [m for m in replies if m["type"] == "error"]
    assert pongs + len(limited) == count
    assert limited and all(m["code"] == "rate_limited" and m["ref"] is None for m in limited)
    # At most 50 per second (the join counted too); a very slow machine spreads them out.
    assert pongs <= 50 * max(1, math.ceil(elapsed))
    # The window slides: after a second the connection is served again, and the session works.
    await asyncio.sleep(1.1)
    await raw.pong()
    await chat_round_trip(teller, raw, "after the flood")
    await chat_round_trip(raw, teller, "and back")


@pytest.mark.parametrize("kind", ["binary", "oversized"])
async def test_frames_that_are_refused_anyway_still_count_for_the_rate_limit(
    call: Call, kind: str
) -> None:
    """Binary and oversized frames cost the server work too: they are no way around the limit."""
    raw, _ = await call.joined(call.customer)
    count = 80
    oversized = json.dumps({"v": 1, "type": "chat", "text": "x" * (65 * 1024)})
    started = time.monotonic()
    for _ in range(count):
        if kind == "binary":
            await raw.ws.send_bytes(b'{"v": 1, "type": "ping"}')
        else:
            await raw.ws.send_str(oversized)
    replies = [await raw.receive() for _ in range(count)]
    elapsed = time.monotonic() - started
    codes = [m.get("code") for m in replies]
    assert all(m["type"] == "error" for m in replies)
    expected = "bad_json" if kind == "binary" else "message_too_large"
    assert set(codes) == {expected, "rate_limited"}
    assert codes.count(expected) <= 50 * max(1, math.ceil(elapsed))
    await asyncio.sleep(1.1)
    await raw.pong()


async def test_second_connection_replaces_the_first(call: Call) -> None:
    teller = Bot(call.teller, call.session_id, publish=False)
    first = Bot(call.customer, call.session_id)
    second = Bot(call.customer, call.session_id)
    try:
        await teller.join()
        joined = await first.join()
        await teller.expect("participant_joined")
        again = await second.join()
        assert again["participant_id"] == joined["participant_id"]
        assert again["rejoined"] is True
        assert (await first.expect("closed"))["code"] == 4409
        back = await teller.expect("participant_joined")
        assert back["rejoined"] is True
        # The replaced connection's end is not a disconnect: the participant stays connected.
        await second.send({"type": "ping"})
        await second.expect("pong")
        me = await call.customer.call("GET", "/api/v1/customer/me")
        assert me["participant"]["state"] == "connected"
        assert all(m["type"] != "participant_left" for m in _drain(teller))
        await second.send({"type": "chat", "text": "from the new tab"})
        assert (await teller.expect("chat"))["message"]["text"] == "from the new tab"
    finally:
        for bot in (second, first, teller):
            await bot.close()


def _drain(bot: Bot) -> list[dict[str, Any]]:
    drained = []
    while not bot.messages.empty():
        drained.append(bot.messages.get_nowait())
    return drained


async def test_the_session_survives_a_misbehaving_customer(call: Call) -> None:
    """Everything above in one connection; the teller (a real media client) never notices."""
    teller = Bot(call.teller, call.session_id, colour="blue")
    try:
        await teller.join()
        raw = await call.connect(call.customer)
        await raw.send(type="chat", text="too early")
        await raw.error("out_of_order", "chat")
        await raw.send(type="join")
        await raw.expect("joined")
        await raw.expect("offer")
        await teller.expect("participant_joined")
        await raw.ws.send_str("{oops")
        await raw.error("bad_json")
        await raw.ws.send_bytes(b"\x00\x01")
        await raw.error("bad_json")
        await raw.send(type="chat", text="x" * (65 * 1024))
        await raw.error("message_too_large")
        await raw.send(type="join")
        await raw.error("out_of_order", "join")
        await raw.send(type="answer", sdp="not sdp")
        await raw.error("invalid_sdp", "answer")
        await raw.send(type="screen_share", active=True)
        await raw.error("forbidden", "screen_share")
        await raw.send(type="dance")
        await raw.error("invalid_message", "dance")
        await raw.pong()
        await chat_with_bot(teller, raw, "你好")
        health = await call.teller.http.get(call.server.url + "/healthz")
        assert health.status == 200
        health.release()
        assert call.server.services.rooms.peer_count() == 2
    finally:
        await teller.close()
