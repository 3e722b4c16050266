"""vteller behind its TLS front (infra/proxy.sh): real nginx, two workers, a call through it.

What an operator deploys: one HTTPS port for the pages, the API and every worker's signaling;
vteller told its public and advertise URLs and that nginx is a trusted proxy.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.media import free_port
from tests.support.bot import Bot, dominant
from tests.support.infra import infra
from tests.support.process import ServerProcess
from tests.support.server import ApiClient
from tests.support.tls import loopback_tls


@pytest.fixture
async def behind_proxy(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, str, ssl.SSLContext]]:
    """vteller (two workers) behind nginx; the access log is `tmp_path/proxy/access.log`."""
    ca_file, _ = loopback_tls(tmp_path / "tls")
    origin = f"https://127.0.0.1:{free_port()}"
    server = ServerProcess(
        tmp_path / "data",
        workers=2,
        VTELLER_PUBLIC_URL=origin,
        VTELLER_ADVERTISE_URL=f"{origin}/w/127.0.0.1/{{port}}",
        VTELLER_TRUSTED_PROXIES=json.dumps(["127.0.0.1/32"]),
        VTELLER_COOKIE_SECURE="true",
    )
    options = [
        "--dir",
        str(tmp_path / "proxy"),
        "--listen",
        origin.removeprefix("https://"),
        "--cert",
        str(tmp_path / "tls" / "receiver.pem"),
        "--key",
        str(tmp_path / "tls" / "receiver.key"),
        "--backend",
        f"127.0.0.1:{server.port}",
        "--backend",
        f"127.0.0.1:{server.port + 1}",
    ]
    server.create_user("teller1", "teller")
    await server.start()
    try:
        infra("proxy.sh", "start", *options)
        try:
            yield server, origin, ssl.create_default_context(cafile=ca_file)
        finally:
            infra("proxy.sh", "stop", *options)
    finally:
        server.stop()


async def test_a_call_through_the_tls_front(
    behind_proxy: tuple[ServerProcess, str, ssl.SSLContext], tmp_path: Path
) -> None:
    server, origin, tls = behind_proxy
    teller_http, customer_http = ApiClient(origin, tls), ApiClient(origin, tls)
    teller = customer = None
    try:
        async with teller_http.http.post(
            f"{origin}/api/v1/auth/login", json={"username": "teller1", "password": "x"}
        ) as refused:
            assert refused.status == 401
            assert refused.headers["Strict-Transport-Security"] == "max-age=31536000"
            assert refused.headers["Server"] == "nginx"  # no version
        await teller_http.login("teller1")
        cookies = {c.key: c for c in teller_http.http.cookie_jar}
        assert cookies and all(c["secure"] for c in cookies.values())

        # Each worker's own path reaches that worker, and only worker paths are routed.
        for port in (server.port, server.port + 1):
            async with teller_http.http.get(f"{origin}/w/127.0.0.1/{port}/healthz") as health:
                assert health.status == 200 and (await health.json())["status"] == "ok"
        async with teller_http.http.get(f"{origin}/w/10.0.0.1/22/healthz") as elsewhere:
            assert elsewhere.status == 404

        created = await teller_http.call(
            "POST", "/api/v1/invitations", {"business": "wealth"}, expect=201
        )
        assert created["invitation_url"].startswith(f"{origin}/join/")
        session = created["session"]
        worker_path = session["ws_url"].removeprefix(origin.replace("https", "wss", 1))
        assert worker_path in {
            f"/w/127.0.0.1/{port}/ws/v1/sessions/{session['id']}"
            for port in (server.port, server.port + 1)
        }
        await customer_http.join_link(created["invitation_url"])
        # The teller's requests after login all went to one worker (an auditor's playback and
        # export download live there); no bearer token reached the log.
        for _ in range(6):
            await teller_http.call("GET", "/api/v1/sessions")
        log = (tmp_path / "proxy" / "access.log").read_text()
        listed = [line for line in log.splitlines() if '"GET /api/v1/sessions"' in line]
        served = {line.rsplit("-> ", 1)[1] for line in listed}
        assert len(listed) == 6 and len(served) == 1, served
        token = created["invitation_url"].rsplit("/", 1)[1]
        assert token not in log and "POST /api/v1/join/{token}" in log

        teller = Bot(teller_http, session["id"], colour="blue", ws_url=session["ws_url"])
        customer = Bot(customer_http, session["id"], colour="red", ws_url=session["ws_url"])
        await teller.join()
        await customer.join()
        seen_by_teller = await teller.wait_for_media(customer.participant_id, "camera")
        seen_by_customer = await customer.wait_for_media(teller.participant_id, "camera")
        assert seen_by_teller.last_rgb and dominant(seen_by_teller.last_rgb) == "red"
        assert seen_by_customer.last_rgb and dominant(seen_by_customer.last_rgb) == "blue"
    finally:
        for bot in (customer, teller):
            if bot is not None:
                await bot.close()
        await customer_http.close()
        await teller_http.close()
