"""Browsers without a direct path reach the SFU through TURN (server/sfu/turn.py, infra/turn.sh).

Against a real coturn that infra/turn.sh configured and started: it takes the credentials vteller
hands out and nothing else, relays to the SFU's address and nowhere else, and a whole call goes
through it when the bank sends every call through its TURN server (relay-only ICE).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from pydantic import SecretStr

from bench.media import free_port
from server.auth.principal import Role
from server.sfu import turn as turn_module
from server.sfu.turn import BrowserIce, TurnConfig, turn_credential
from tests.support import server as support
from tests.support.bot import Bot, dominant
from tests.support.turn import PrivateTurn


@asynccontextmanager
async def _allocation(
    turn: PrivateTurn, username: str, password: str
) -> AsyncIterator[TurnClientUdpProtocol]:
    """A TURN client (aioice's, as the SFU's and aiortc clients' ICE use it), not yet allocated."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            ("127.0.0.1", turn.port),
            username=username,
            password=password,
            lifetime=600,
            channel_refresh_time=300,
        ),
        remote_addr=("127.0.0.1", turn.port),
    )
    try:
        yield protocol
    finally:
        if protocol.refresh_task is not None:
            protocol.refresh_task.cancel()
        transport.close()


class _Sfu(asyncio.DatagramProtocol):
    """Stands for the SFU's UDP socket: what arrives, and from where."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))


def _participant_credential(turn: PrivateTurn, participant_id: str) -> dict[str, object]:
    ice = BrowserIce([], TurnConfig(urls=[turn.url]), turn.secret)
    return ice.servers(participant_id, time.time())[-1]


async def test_a_participants_credential_relays_to_the_sfu_and_nowhere_else(
    turn: PrivateTurn,
) -> None:
    credential = _participant_credential(turn, "p_customer")
    username, password = str(credential["username"]), str(credential["credential"])
    sfu_transport, sfu = await asyncio.get_running_loop().create_datagram_endpoint(
        _Sfu, local_addr=("127.0.0.1", 0)
    )
    try:
        async with _allocation(turn, username, password) as client:
            relayed = await client.connect()
            assert relayed[0] == "127.0.0.1"

            await client.send_data(b"media", sfu_transport.get_extra_info("sockname"))
            data, source = await asyncio.wait_for(sfu.received.get(), 5)
            assert (data, source) == (b"media", relayed)

            # Anything but the SFU: the bank's other hosts, the internet.
            for elsewhere in (("10.255.0.1", 9), ("192.168.1.1", 53), ("198.51.100.7", 443)):
                with pytest.raises(stun.TransactionFailed) as refused:
                    await client.send_data(b"probe", elsewhere)
                assert refused.value.response.error_code == 403
    finally:
        sfu_transport.close()


async def test_expired_or_forged_credentials_are_refused(turn: PrivateTurn) -> None:
    expired = f"{int(time.time()) - 60}:p_customer"
    current = f"{int(time.time()) + 600}:p_customer"
    for username, password in (
        (expired, turn_credential(turn.secret, expired)),
        (current, turn_credential("not the shared secret", current)),
        (current, "a standing password"),
    ):
        async with _allocation(turn, username, password) as client:
            with pytest.raises(stun.TransactionFailed) as refused:
                await client.connect()
            assert refused.value.response.error_code == 401


async def test_a_turn_server_that_would_refuse_or_ignore_participants_is_reported_at_start(
    turn: PrivateTurn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_module, "CHECK_SECONDS", 2.0)
    reachable = TurnConfig(urls=[turn.url, "turns:turn.bank.example:5349?transport=tcp"])
    assert await BrowserIce([], reachable, turn.secret).check() == []
    [refused] = await BrowserIce([], reachable, "not the shared secret").check()
    assert refused.startswith(turn.url) and "another secret" in refused
    nobody = TurnConfig(urls=[f"turn:127.0.0.1:{free_port()}?transport=udp"])
    [unanswered] = await BrowserIce([], nobody, turn.secret).check()
    assert "no answer" in unanswered and "infra/turn.sh status" in unanswered


async def test_a_call_goes_through_turn_when_every_call_must(
    tmp_path: Path, turn: PrivateTurn
) -> None:
    settings = support.test_settings(
        tmp_path,
        turn=TurnConfig(urls=[turn.url], secret=SecretStr(turn.secret), relay_only=True),
    )
    async with support.running_server(settings) as server:
        await server.user("teller1", Role.TELLER, "王柜员")
        teller_http = server.client()
        await teller_http.login("teller1")
        created = await teller_http.call(
            "POST", "/api/v1/invitations", {"business": "wealth"}, expect=201
        )
        session_id = created["session"]["id"]
        customer_http = server.client()
        await customer_http.join_link(created["invitation_url"])
        teller = Bot(teller_http, session_id, colour="blue", tone_hz=880)
        customer = Bot(customer_http, session_id, colour="red", tone_hz=440)
        try:
            await teller.join()
            joined = await customer.join()
            assert joined["ice_transport_policy"] == "relay"
            [relay] = joined["ice_servers"]
            assert relay["urls"] == [turn.url]
            expiry, _, whose = relay["username"].partition(":")
            assert whose == customer.participant_id
            assert abs(int(expiry) - (time.time() + 60 * 60)) < 60
            assert relay["credential"] == turn_credential(turn.secret, relay["username"])
            assert teller.ice_servers[0]["username"] != relay["username"]  # one each

            seen_by_teller = await teller.wait_for_media(customer.participant_id, "camera")
            seen_by_customer = await customer.wait_for_media(teller.participant_id, "camera")
            assert seen_by_teller.last_rgb and dominant(seen_by_teller.last_rgb) == "red"
            assert seen_by_customer.last_rgb and dominant(seen_by_customer.last_rgb) == "blue"
            await customer.wait_for_media(teller.participant_id, "microphone")

            # Relay-only: the clients had no other candidates, and coturn carried them.
            for bot in (teller, customer):
                assert bot.pc is not None
                gatherer = bot.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
                assert {c.type for c in gatherer.getLocalCandidates()} == {"relay"}
            log = turn.log.read_text()
            assert customer.participant_id in log and teller.participant_id in log
        finally:
            await customer.close()
            await teller.close()
