"""Limits on unauthenticated requests against a real server: failed logins under concurrency and
across workers (SQLite and PostgreSQL), what the audit log keeps of them, and the public queue's
per-address limits for IPv6 clients."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from server.auth.principal import Role
from server.auth.ratelimit import LoginThrottle, Throttled
from server.db.engine import create_engine, migrate, session_factory
from server.workflow.queue.config import QueueConfig
from tests.integration.test_http_api import assert_error, send
from tests.support import server as support
from tests.support.postgres import database_url
from tests.support.server import PASSWORD, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")
BOTH = pytest.mark.parametrize("database", ["sqlite", "postgresql"])


async def _failed_logins(server: RunningServer) -> list[tuple[str, str, str | None]]:
    entries = await server.services.audit.tail(1000)
    return [
        (e.target, e.detail["reason"], e.address)
        for e in entries
        if e.action == "auth.login_failed"
    ]


@BOTH
async def test_a_burst_of_guesses_gets_no_more_checks_than_the_limit(
    server: RunningServer,
) -> None:
    await server.user("teller1", Role.TELLER)
    client = server.client()
    guesses = [{"username": "teller1", "password": f"guess-{n}-{n}"} for n in range(30)]
    replies = await asyncio.gather(
        *(send(client, "POST", "/api/v1/auth/login", guess) for guess in guesses)
    )
    # 5 failures per user (the default): five guesses were checked, the rest refused unchecked.
    assert Counter(r.code for r in replies) == {"invalid_credentials": 5, "rate_limited": 25}
    limited = await send(
        client, "POST", "/api/v1/auth/login", {"username": "teller1", "password": PASSWORD}
    )
    assert_error(limited, 429, "rate_limited")
    # Every checked guess is in the audit log; of the refusals only the first, which says the
    # throttle held: unauthenticated requests cannot grow the log beyond that.
    logged = await _failed_logins(server)
    assert sorted(logged) == sorted(
        [("teller1", "invalid_credentials", "127.0.0.1")] * 5
        + [("teller1", "rate_limited", "127.0.0.1")]
    )


@BOTH
async def test_workers_sharing_the_database_share_the_limit(tmp_path: Path, database: str) -> None:
    # Three workers (engines with pools of their own, as processes have), one database: guesses
    # spread over them at once still get the limit of 5 checks, not 5 per worker.
    async with database_url(database) as url:
        url = url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        engines = [create_engine(url) for _ in range(3)]
        try:
            await migrate(engines[0])
            throttles = [LoginThrottle(session_factory(e), 5, 20, 900) for e in engines]

            async def guess(n: int) -> str:
                try:
                    await throttles[n % 3].attempt("alice", f"192.0.2.{n}")
                except Throttled as refusal:
                    return "refused, reported" if refusal.first_in_window else "refused"
                return "checked"

            outcomes = await asyncio.gather(*(guess(n) for n in range(30)))
        finally:
            for engine in engines:
                await engine.dispose()
    assert Counter(outcomes) == {"checked": 5, "refused, reported": 1, "refused": 24}


async def test_a_username_too_long_is_refused_before_it_is_logged(server: RunningServer) -> None:
    client = server.client()
    longest = "x" * 64
    too_long = await send(
        client, "POST", "/api/v1/auth/login", {"username": "y" * 10_000, "password": "wrong"}
    )
    assert_error(too_long, 400, "invalid_request")
    refused = await send(
        client, "POST", "/api/v1/auth/login", {"username": longest, "password": "wrong"}
    )
    assert_error(refused, 401, "invalid_credentials")
    assert await _failed_logins(server) == [(longest, "invalid_credentials", "127.0.0.1")]


async def test_an_ipv6_client_is_limited_by_its_64(tmp_path: Path) -> None:
    """A client given a /64 (the usual least) has 2^64 addresses: counted one by one, each would
    have a limit of its own."""
    settings = support.test_settings(
        tmp_path,
        trusted_proxies=["127.0.0.0/8"],
        queue=QueueConfig(requests_per_address=3),
    )
    async with support.running_server(settings) as server:
        client = server.client()

        async def poll(address: str) -> int:
            # A poll without a ticket is counted (it could be guessing one).
            reply = await send(
                client, "GET", "/api/v1/queue/ticket", headers={"X-Forwarded-For": address}
            )
            return reply.status

        same_64 = [await poll(f"2001:db8:7:8::{n:x}") for n in range(1, 6)]
        assert same_64 == [404, 404, 404, 429, 429]
        assert await poll("2001:db8:7:9::1") == 404  # the next /64: another client

        # Logins too: 20 failures per address (the default) from one /64.
        guesses = [
            await send(
                client,
                "POST",
                "/api/v1/auth/login",
                {"username": f"user{n}", "password": "wrong"},
                headers={"X-Forwarded-For": f"2001:db8:7:8:{n:x}::1"},
            )
            for n in range(21)
        ]
        assert [g.code for g in guesses[-2:]] == ["invalid_credentials", "rate_limited"]
        # The audit log names the address itself, not its /64.
        assert (await _failed_logins(server))[-1] == (
            "user20",
            "rate_limited",
            "2001:db8:7:8:14::1",
        )
