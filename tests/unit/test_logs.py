"""What the process log shows of a request: never a credential from its path (server/logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server.api import join_routes, pages
from server.api.middleware import json_errors
from server.logs import AccessLogger, configure_logging

TOKEN = "Zk3v9QxSECRETINVITATIONTOKENxxxxxxxxxxxxxxx"  # 43 characters, as new_token() makes


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Logging as `vteller serve` sets it up, to the captured standard error; put back after."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    configure_logging("INFO", "json")
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def base_url(json_logs: None) -> AsyncIterator[str]:
    """A server with the invitation routes (their handlers fail here: no services) and the
    access log."""
    app = web.Application(middlewares=[json_errors])
    app.add_routes(pages.routes)
    app.add_routes(join_routes.routes)
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    assert TOKEN not in err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_a_routed_path_is_logged_as_its_route(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", f"/join/{TOKEN}"),
            ("GET", f"/api/v1/join/{TOKEN}?again=1"),
            ("POST", f"/api/v1/join/{TOKEN}"),
            ("GET", "/staff/"),
        ]:
            async with http.request(method, base_url + path) as response:
                await response.read()
    lines = _lines(capsys)
    access = [(line["method"], line["path"]) for line in lines if line["event"] == "http_request"]
    assert access == [
        ("GET", "/join/{token}"),
        ("GET", "/api/v1/join/{token}"),
        ("POST", "/api/v1/join/{token}"),
        ("GET", "/staff/"),  # a fixed path as it is
    ]
    # The API route failed (no services here): its error line names the route too.
    failed = [line["path"] for line in lines if line["event"] == "request_failed"]
    assert failed == ["/api/v1/join/{token}", "/api/v1/join/{token}"]


async def test_an_unrouted_path_has_long_segments_redacted(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with aiohttp.ClientSession() as http:
        for path in [
            f"/api/v1/join/{TOKEN}/x",
            f"/joins/{TOKEN}",
            "/api/v1/sixteen-or-longer",
            "/api/v1/shorter",
        ]:
            async with http.put(base_url + path) as response:
                assert response.status == 404
    assert [line["path"] for line in _lines(capsys)] == [
        "/api/v1/join/{redacted}/x",
        "/joins/{redacted}",
        "/api/v1/{redacted}",  # long enough to be a credential
        "/api/v1/shorter",
    ]


async def test_a_malformed_request_is_not_quoted(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # aiohttp reports a request it cannot parse with its first line, the token included.
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /join/{TOKEN}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.0 400")
    writer.close()
    await asyncio.sleep(0.05)  # the access log line follows the response
    assert [line["status"] for line in _lines(capsys)] == [400]


def test_a_request_without_a_route_is_redacted(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    request = make_mocked_request("POST", f"/api/v1/join/{TOKEN}")
    AccessLogger(logging.getLogger("test"), "").log(request, web.Response(status=200), 0.01)
    assert [line["path"] for line in _lines(capsys)] == ["/api/v1/join/{redacted}"]
