"""Two and three parties in one session, through the real server and SFU, with aiortc clients."""

from __future__ import annotations

import asyncio
from typing import Any

from server.auth.principal import Role
from tests.support.bot import Bot, dominant
from tests.support.server import RunningServer


async def _teller_and_customer(server: RunningServer) -> tuple[Bot, Bot, str]:
    await server.user("teller1", Role.TELLER, "王柜员")
    teller_http = server.client()
    await teller_http.login("teller1")
    created = await teller_http.call(
        "POST", "/api/v1/invitations", {"business": "wealth", "customer_name": "李女士"}, expect=201
    )
    session_id = created["session"]["id"]
    customer_http = server.client()
    await customer_http.join_link(created["invitation_url"])
    teller = Bot(teller_http, session_id, colour="blue", tone_hz=880)
    customer = Bot(customer_http, session_id, colour="red", tone_hz=440)
    return teller, customer, session_id


async def test_teller_and_customer_see_each_other(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    try:
        await teller.join()
        joined = await customer.join()
        assert [p["role"] for p in joined["participants"]] == ["teller"]
        arrived = await teller.expect("participant_joined")
        assert arrived["participant"]["role"] == "customer"

        seen_by_teller = await teller.wait_for_media(customer.participant_id, "camera")
        seen_by_customer = await customer.wait_for_media(teller.participant_id, "camera")
        assert seen_by_teller.last_rgb and dominant(seen_by_teller.last_rgb) == "red"
        assert seen_by_customer.last_rgb and dominant(seen_by_customer.last_rgb) == "blue"
        await teller.wait_for_media(customer.participant_id, "microphone")
        await customer.wait_for_media(teller.participant_id, "microphone")
    finally:
        await customer.close()
        await teller.close()
    detail = await server.services.sessions.require(session_id)
    assert detail.state == "active"


async def _expert_bot(server: RunningServer, teller: Bot, session_id: str) -> Bot:
    await server.user("expert1", Role.EXPERT, "赵专家")
    await teller.client.call(
        "POST", f"/api/v1/sessions/{session_id}/experts", {"username": "expert1"}, expect=201
    )
    expert_http = server.client()
    await expert_http.login("expert1")
    listed = await expert_http.call("GET", "/api/v1/sessions")
    assert [s["id"] for s in listed["sessions"]] == [session_id]
    return Bot(expert_http, session_id, colour="green", tone_hz=660)


async def test_expert_joins_and_everyone_sees_everyone(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    expert = await _expert_bot(server, teller, session_id)
    bots = [teller, customer, expert]
    try:
        for bot in bots:
            await bot.join()
        for viewer in bots:
            for other in bots:
                if other is viewer:
                    continue
                got = await viewer.wait_for_media(other.participant_id, "camera")
                assert got.last_rgb and dominant(got.last_rgb) == other.colour
                await viewer.wait_for_media(other.participant_id, "microphone")
    finally:
        for bot in bots:
            await bot.close()


async def test_supervisor_observes_silently(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    await server.user("super1", Role.SUPERVISOR, "陈主管")
    supervisor_http = server.client()
    await supervisor_http.login("super1")
    supervisor = Bot(supervisor_http, session_id, publish=False)
    try:
        await teller.join()
        await customer.join()
        joined = await supervisor.join()
        assert joined["role"] == "supervisor"
        got = await supervisor.wait_for_media(customer.participant_id, "camera")
        assert got.last_rgb and dominant(got.last_rgb) == "red"
        await supervisor.wait_for_media(teller.participant_id, "camera")
        # The teller is told; the customer never is, neither by message nor in the session view.
        told = await teller.expect("participant_joined")
        if told["participant"]["role"] == "customer":
            told = await teller.expect("participant_joined")
        assert told["participant"]["role"] == "supervisor"
        await customer.send({"type": "ping"})
        await customer.expect("pong")
        seen = [m for m in _drain(customer) if m["type"] == "participant_joined"]
        assert all(m["participant"]["role"] != "supervisor" for m in seen)
        me = await customer.client.call("GET", "/api/v1/customer/me")
        assert "supervisor" not in {p["role"] for p in me["session"]["participants"]}
        # An observer sends nothing: no offer asks it to publish.
        assert supervisor.pc is not None
        assert all(t.direction != "sendonly" for t in supervisor.pc.getTransceivers())
        # Nor writes in the chat, which the customer reads.
        await supervisor.send({"type": "chat", "text": "我在旁听"})
        refused = await supervisor.expect("error")
        assert (refused["code"], refused["ref"]) == ("forbidden", "chat")
        await customer.send({"type": "ping"})
        heard = [await asyncio.wait_for(customer.messages.get(), 10)]
        while heard[-1]["type"] != "pong":
            heard.append(await asyncio.wait_for(customer.messages.get(), 10))
        assert "chat" not in {m["type"] for m in heard}
    finally:
        for bot in (teller, customer, supervisor):
            await bot.close()


def _drain(bot: Bot) -> list[dict[str, Any]]:
    drained = []
    while not bot.messages.empty():
        drained.append(bot.messages.get_nowait())
    return drained


async def test_customer_drops_and_rejoins_within_grace(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        customer_id = customer.participant_id

        await customer.close()  # vanishes without `leave`, like a killed browser
        left = await teller.expect("participant_left")
        assert left == left | {"participant_id": customer_id, "reason": "disconnected"}

        returning = Bot(customer.client, session_id, colour="red")
        joined = await returning.join()
        assert joined["rejoined"] is True and returning.participant_id == customer_id
        back = await teller.expect("participant_joined")
        assert back["rejoined"] is True
        # The teller did nothing, and the same forwarded track carries the customer again.
        before = teller.received[f"{customer_id}/camera"].frames
        got = await teller.wait_for_media(customer_id, "camera", frames=before + 20)
        assert got.last_rgb and dominant(got.last_rgb) == "red"
        await returning.close(leave=True)
    finally:
        await teller.close()
    events = [e.type for e in await server.services.sessions.events(session_id)]
    assert "participant_disconnected" in events and "participant_rejoined" in events
    gap = next(
        e
        for e in await server.services.sessions.events(session_id)
        if e.type == "participant_rejoined"
    )
    assert gap.detail["gap_seconds"] >= 0


async def test_either_side_ends_the_call_and_the_record_stays(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await customer.send({"type": "chat", "text": "您好，我想咨询理财"})
        chat = await teller.expect("chat")
        assert chat["message"]["text"] == "您好，我想咨询理财"
        assert chat["message"]["role"] == "customer"
        await customer.send({"type": "end"})
        ended = await teller.expect("session_ended")
        assert ended["by"] == customer.participant_id
        closed = await teller.expect("closed")
        assert closed["code"] == 4410
    finally:
        await customer.close()
        await teller.close()
    detail = await teller.client.call("GET", f"/api/v1/sessions/{session_id}")
    assert detail["session"]["state"] == "ended"
    assert [m["text"] for m in detail["chat"]] == ["您好，我想咨询理财"]
    assert {p["role"]: p["state"] for p in detail["session"]["participants"]} == {
        "teller": "left",
        "customer": "left",
    }
    types = [e["type"] for e in detail["events"]]
    assert types[0] == "invitation_created" and types[-1] == "session_ended"
    # The link cannot bring anyone back into an ended session.
    again = Bot(customer.client, session_id)
    await again.connect()
    assert (await again.expect("error"))["code"] == "session_ended"
    assert (await again.expect("closed"))["code"] == 4410
    await again.close()


async def test_metrics_count_forwarded_media_and_need_the_token(server: RunningServer) -> None:
    teller, customer, _ = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        http = server.client()
        anonymous = await http.http.get(server.url + "/metrics")
        assert anonymous.status == 401
        token = (server.settings.data_dir / "metrics.token").read_text().strip()
        response = await http.http.get(
            server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        text = await response.text()
    finally:
        await customer.close()
        await teller.close()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["vteller_sessions"] == 1
    assert values["vteller_peers"] == 2
    assert values["vteller_packets_forwarded_total"] > 20
    assert values["vteller_bytes_forwarded_total"] > 1000
    assert values["vteller_forwarding_delay_seconds_count"] > 20
    assert values["vteller_event_loop_lag_seconds_count"] >= 0
