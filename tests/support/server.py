"""A real vteller server on a loopback port, and HTTP clients acting as staff or customers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.media import free_port
from server.app import create_app
from server.auth.principal import Role
from server.context import SERVICES, Services
from server.identity.config import IdentityConfig
from server.settings import Settings
from tests.support.postgres import database_of, whole_suite_on_postgres

PASSWORD = "correct-horse-battery"


def test_settings(data_dir: Path, **overrides: Any) -> Settings:
    port = free_port()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": data_dir,
        "ice_host_addresses": ["127.0.0.1"],
        "ice_peer_networks": ["127.0.0.1/32"],
        "log_format": "console",
        "log_level": "WARNING",
        # Hundreds of short-lived servers: models load when a test uses them, not at each start.
        "identity": IdentityConfig(preload=False),
        # Speech recognition of every test recording would cost minutes; the tests of the
        # analysis turn it on.
        "compliance_analysis": False,
        "live_speech": False,
    } | overrides
    return Settings(**values)


@dataclass
class RunningServer:
    settings: Settings
    app: web.Application
    clients: list[ApiClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.origin

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    async def user(self, username: str, role: Role, display_name: str = "") -> str:
        # Seeded without an audit entry: the tests of account creation go through the API.
        auth = self.services.auth
        user = await auth.add_user(
            await auth.new_user(username, PASSWORD, display_name or username, role)
        )
        return user.id

    def client(self) -> ApiClient:
        client = ApiClient(self.url)
        self.clients.append(client)
        return client


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[RunningServer]:
    if not settings.database_url and whole_suite_on_postgres():
        url = await database_of(settings.data_dir)
        settings = settings.model_copy(update={"database_url": url})
    app = await create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    running = RunningServer(settings, app)
    try:
        yield running
    finally:
        for client in running.clients:
            await client.close()
        await runner.cleanup()


class ApiClient:
    """A browser-like HTTP client: its own cookie jar, the CSRF token it was given, our Origin."""

    def __init__(self, base: str, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the CA to trust for an https:// `base` (the system's by default)."""
        self.base = base
        self.csrf = ""
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"Origin": base},
            connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
        )

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = 200
    ) -> Any:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            data = await response.json()
            if expect is not None:
                assert response.status == expect, (response.status, data)
            return data

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        data = await self.call(
            "POST", "/api/v1/auth/login", {"username": username, "password": password}
        )
        self.csrf = data["csrf_token"]
        return dict(data)

    async def join_link(self, url: str) -> dict[str, Any]:
        token = url.rsplit("/", 1)[1]
        data = await self.call("POST", f"/api/v1/join/{token}")
        self.csrf = data["csrf_token"]
        return dict(data)

    def ws_url(self, session_id: str) -> str:
        return self.base.replace("http", "ws", 1) + f"/ws/v1/sessions/{session_id}"

    async def close(self) -> None:
        await self.http.close()
