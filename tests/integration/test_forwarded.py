"""Behind the bank's TLS proxy: the client's address comes from X-Forwarded-For, and only when
the request comes from a trusted proxy (server/api/forwarded.py)."""

from __future__ import annotations

from pathlib import Path

from server.auth.principal import Role
from tests.support import server as support
from tests.support.bot import Bot

FORWARDED = "198.51.100.9, 203.0.113.7"  # a client-written entry, then the proxy's


async def _addresses(tmp_path: Path, trusted: list[str]) -> dict[str, str | None]:
    settings = support.test_settings(tmp_path, trusted_proxies=trusted)
    async with support.running_server(settings) as server:
        await server.user("teller1", Role.TELLER, "王柜员")
        teller = server.client()
        teller.http.headers["X-Forwarded-For"] = FORWARDED
        await teller.login("teller1")
        created = await teller.call(
            "POST", "/api/v1/invitations", {"business": "general"}, expect=201
        )
        customer = server.client()
        customer.http.headers["X-Forwarded-For"] = "192.0.2.44"
        await customer.join_link(created["invitation_url"])
        # Signaling through the same middleware: the WebSocket upgrade still works.
        bot = Bot(customer, created["session"]["id"])
        try:
            joined = await bot.join()
            assert joined["role"] == "customer"
        finally:
            await bot.close()
        entries = await server.services.audit.tail(50)
    return {e.action: e.address for e in entries}


async def test_the_client_address_comes_from_a_trusted_proxy(tmp_path: Path) -> None:
    seen = await _addresses(tmp_path, ["127.0.0.0/8"])
    # The nearest hop the proxy did not vouch for; the client-written one is never believed.
    assert seen["auth.login"] == "203.0.113.7"
    assert seen["invitation.redeemed"] == "192.0.2.44"


async def test_the_header_is_ignored_from_anyone_else(tmp_path: Path) -> None:
    seen = await _addresses(tmp_path, [])
    assert seen["auth.login"] == "127.0.0.1"
    assert seen["invitation.redeemed"] == "127.0.0.1"
