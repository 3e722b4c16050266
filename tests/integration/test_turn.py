"""Browsers without a direct path reach the SFU through TURN (server/sfu/turn.py, infra/turn.sh).

Against a real coturn that infra/turn.sh configured and started: it takes the credentials vteller
hands out and nothing else, relays to the SFU's address and nowhere else, over UDP and over TLS
(`turns:`, for customers whose networks let only TLS out), and a whole call goes through it when
the bank sends every call through its TURN server (relay-only ICE).

Over TLS the clients check coturn's certificate against the throwaway CA the legitimate way: an
SSLContext given to aioice, or, for what uses the system's trust store (aiortc's ICE, vteller's
start-up check), SSL_CERT_FILE.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import TurnClientProtocol
from pydantic import SecretStr

from bench.media import free_port
from server.auth.principal import Role
from server.sfu import turn as turn_module
from server.sfu.turn import BrowserIce, TurnConfig, turn_client, turn_credential, turn_server
from tests.support import server as support
from tests.support.bot import Bot, dominant
from tests.support.infra import infra, run_infra
from tests.support.tls import loopback_tls
from tests.support.turn import PrivateTurn


def _allocation(
    turn: PrivateTurn, url: str, username: str, password: str
) -> AbstractAsyncContextManager[TurnClientProtocol]:
    """A TURN client (aioice's, as the SFU's and aiortc clients' ICE use it), not yet allocated;
    over TLS trusting the throwaway CA only."""
    trusted = ssl.create_default_context(cafile=turn.ca_file)
    return turn_client(turn_server(url), username, password, tls=trusted)


class _Sfu(asyncio.DatagramProtocol):
    """Stands for the SFU's UDP socket: what arrives, and from where."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))


def _participant_credential(turn: PrivateTurn, participant_id: str) -> dict[str, object]:
    ice = BrowserIce([], TurnConfig(urls=[turn.url]), turn.secret)
    return ice.servers(participant_id, time.time())[-1]


@pytest.mark.parametrize("over", ["url", "tls_url"])
async def test_a_participants_credential_relays_to_the_sfu_and_nowhere_else(
    turn: PrivateTurn, over: str
) -> None:
    url = getattr(turn, over)
    credential = _participant_credential(turn, "p_customer")
    username, password = str(credential["username"]), str(credential["credential"])
    sfu_transport, sfu = await asyncio.get_running_loop().create_datagram_endpoint(
        _Sfu, local_addr=("127.0.0.1", 0)
    )
    try:
        async with _allocation(turn, url, username, password) as client:
            relayed = await client.connect()
            assert relayed[0] == "127.0.0.1"
            if over == "tls_url":
                _, version, _ = client.transport.get_extra_info("cipher")
                assert version == "TLSv1.2"  # none older (Debian's coturn 4.6.1 has no TLS 1.3)

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
        async with _allocation(turn, turn.url, username, password) as client:
            with pytest.raises(stun.TransactionFailed) as refused:
                await client.connect()
            assert refused.value.response.error_code == 401


async def test_a_turn_server_that_would_refuse_or_ignore_participants_is_reported_at_start(
    turn: PrivateTurn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_module, "CHECK_SECONDS", 2.0)
    monkeypatch.setenv("SSL_CERT_FILE", str(turn.ca_file))
    reachable = TurnConfig(urls=[turn.url, turn.tls_url])
    assert await BrowserIce([], reachable, turn.secret).check() == []
    refused = await BrowserIce([], reachable, "not the shared secret").check()
    assert [problem.partition(": ")[0] for problem in refused] == reachable.urls
    assert all("another secret" in problem for problem in refused)
    nobody = TurnConfig(
        urls=[
            f"turn:127.0.0.1:{free_port()}?transport=udp",
            f"turns:127.0.0.1:{free_port()}?transport=tcp",
        ]
    )
    unanswered = await BrowserIce([], nobody, turn.secret).check()
    assert len(unanswered) == 2
    assert all("no answer" in p and "infra/turn.sh status" in p for p in unanswered)

    # A certificate that customers' browsers (here: this machine) do not trust keeps out exactly
    # the customers who have only TLS.
    monkeypatch.delenv("SSL_CERT_FILE")
    [untrusted] = await BrowserIce([], TurnConfig(urls=[turn.tls_url]), turn.secret).check()
    assert "certificate is not trusted" in untrusted and "infra/turn.sh --cert" in untrusted


@pytest.mark.parametrize("over", ["url", "tls_url"])
async def test_a_call_goes_through_turn_when_every_call_must(
    tmp_path: Path, turn: PrivateTurn, over: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = getattr(turn, over)
    monkeypatch.setenv("SSL_CERT_FILE", str(turn.ca_file))  # aiortc's turns: trusts the system's
    settings = support.test_settings(
        tmp_path,
        turn=TurnConfig(urls=[url], secret=SecretStr(turn.secret), relay_only=True),
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
            assert relay["urls"] == [url]
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
            if over == "tls_url":  # coturn logs each relay's TLS session
                for bot in (teller, customer):
                    assert re.search(rf":{bot.participant_id}>, .*method=TLSv1\.2$", log, re.M)
        finally:
            await customer.close()
            await teller.close()


def test_turn_sh_refuses_tls_without_a_usable_certificate(tmp_path: Path) -> None:
    loopback_tls(tmp_path / "tls")
    cert, key = tmp_path / "tls" / "receiver.pem", tmp_path / "tls" / "receiver.key"
    key.chmod(0o644)
    loopback_tls(tmp_path / "other")  # coturn would fail every handshake with its key
    other_key = tmp_path / "other" / "receiver.key"
    common = ["--dir", str(tmp_path / "turn"), "--secret-file", str(tmp_path / "turn-secret")]
    common += ["--port", str(free_port()), "--tls-port", str(free_port())]
    for options, fix in (
        (["--cert", str(tmp_path / "missing.pem"), "--key", str(key)], "pass the certificate"),
        (["--cert", str(cert), "--key", str(tmp_path / "missing.key")], "pass the certificate"),
        (["--cert", str(key), "--key", str(key)], "holds no PEM certificate"),
        (["--cert", str(cert), "--key", str(cert)], "holds no unencrypted PEM private key"),
        (["--cert", str(cert), "--key", str(other_key)], "is not the key of the first certificate"),
        (["--cert", str(cert), "--key", str(key)], f"chmod o-rwx '{key}'"),
        ([], "--tls-port needs --cert and --key"),
    ):
        refused = run_infra("turn.sh", "start", *common, *options)
        assert refused.returncode == 1 and fix in refused.stderr, refused.stderr
    without_port = run_infra("turn.sh", "config", "--cert", str(cert), "--key", str(key))
    assert without_port.returncode == 1 and "add --tls-port" in without_port.stderr
    assert not (tmp_path / "turn").exists() and not (tmp_path / "turn-secret").exists()


def test_turn_sh_shows_and_compares_the_tls_settings(turn: PrivateTurn) -> None:
    config = infra("turn.sh", "config", *turn.options).splitlines()
    assert f"tls-listening-port={turn.tls_port}" in config
    assert f"cert={turn.cert_file}" in config and f"pkey={turn.key_file}" in config
    assert {"no-tlsv1", "no-tlsv1_1", "no-dtls"} <= set(config) and "no-tls" not in config
    [ciphers] = [line for line in config if line.startswith("cipher-list=")]
    assert all(
        "ECDHE" in c and ("GCM" in c or "CHACHA20" in c)
        for c in ciphers.removeprefix("cipher-list=").split(":")
    )
    without_tls = turn.options[: turn.options.index("--tls-port")] + turn.options[-4:]
    assert "no-tls" in infra("turn.sh", "config", *without_tls).splitlines()

    same = run_infra("turn.sh", "start", *turn.options)
    assert same.returncode == 0 and "already running" in same.stderr
    assert "another configuration" not in same.stderr
    changed = run_infra("turn.sh", "start", *without_tls)
    assert changed.returncode == 0 and "another configuration" in changed.stderr
